"""Tokenisation: exact response masks on a real BPE tokenizer, budgets, chat templates, encoders, caching."""

from __future__ import annotations

import datasets
import pytest

from cwpo.data import TokenizeConfig, get_filter_report, load_synthetic, tokenize_pairs
from cwpo.data.tokenization import PairTokenizer, dataset_fingerprint, render_messages_plain, tokenizer_fingerprint
from cwpo.errors import ConfigError, DataError


def _pairs(rows):
    return datasets.Dataset.from_list([{"id": f"r{i}", **row} for i, row in enumerate(rows)])


def test_response_mask_is_exact_on_real_hh_rows(hh_test, smollm2_tokenizer):
    """On real HH-RLHF rows, prompt_ids + chosen_ids[:-1] is the tokenisation of prompt + chosen, then EOS."""
    tok = smollm2_tokenizer
    rows = hh_test.select(range(120))
    tokenized = tokenize_pairs(rows, tok)
    report = get_filter_report(tokenized)
    # the loader's drops (whole file) and this stage's: one of the first 120 pairs is over 512 tokens (measured)
    assert report.dropped == {"no_shared_prompt": 5, "empty_response": 4, "over_budget": 1}
    assert report.notes.get("boundary_fallback", 0) == 0  # "\n\nAssistant:" + " ..." never merges
    assert len(tokenized) == 119
    for row in tokenized.select(range(0, 119, 7)):
        for name in ("chosen", "rejected"):
            full = tok(row["prompt"] + row[name], add_special_tokens=False)["input_ids"]
            assert row["prompt_ids"] + row[f"{name}_ids"][:-1] == full
            assert row[f"{name}_ids"][-1] == tok.eos_token_id
            assert tok.decode(row[f"{name}_ids"][:-1]) == row[name]
        assert len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"])) <= 512
    # the loader's report and this stage's are merged
    assert report.n_read == 2312 and report.n_kept == 119


def test_boundary_merge_falls_back_to_separate_ids(smollm2_tokenizer):
    """The prompt "Hello wor" + the response "ld" tokenise jointly as [Hello, Ġworld]: the prompt's ids are kept and the response's
    own ids appended, so the mask still covers exactly the response tokens."""
    tok = smollm2_tokenizer
    tokenized = tokenize_pairs(_pairs([{"prompt": "Hello wor", "chosen": "ld", "rejected": " there"}]), tok)
    row = tokenized[0]
    assert row["prompt_ids"] == tok("Hello wor", add_special_tokens=False)["input_ids"]
    assert row["chosen_ids"] == tok("ld", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert row["rejected_ids"] == tok("Hello wor there", add_special_tokens=False)["input_ids"][2:] + [tok.eos_token_id]
    assert get_filter_report(tokenized).notes == {"boundary_fallback": 1}


def test_chat_template_model(smollm2_tokenizer):
    """Message prompts go through the chat template; prompt + chosen is the templated conversation."""
    tok = smollm2_tokenizer
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    data = _pairs([{"prompt": messages, "chosen": "4", "rejected": "5, I think."}])
    row = tokenize_pairs(data, tok)[0]
    expected_prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert tok.decode(row["prompt_ids"]) == expected_prompt
    assert expected_prompt.endswith("<|im_start|>assistant\n")
    conversation = tok.apply_chat_template(messages + [{"role": "assistant", "content": "4"}], tokenize=False)
    assert tok.decode(row["prompt_ids"] + row["chosen_ids"]) + "\n" == conversation
    assert row["chosen_ids"][-1] == tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id


def test_text_prompt_uses_template_only_when_asked(synthetic_tokenizer):
    tok = synthetic_tokenizer
    data = _pairs([{"prompt": "tell me about space ?", "chosen": " orbit moon", "rejected": " steal"}])
    plain = tokenize_pairs(data, tok, TokenizeConfig(max_length=32))[0]
    assert tok.convert_ids_to_tokens(plain["prompt_ids"]) == ["<s>", "tell", "me", "about", "space", "?"]
    assert tok.convert_ids_to_tokens(plain["chosen_ids"]) == ["orbit", "moon", "</s>"]
    templated = tokenize_pairs(data, tok, TokenizeConfig(max_length=32, chat_template_for_text=True))[0]
    assert tok.convert_ids_to_tokens(templated["prompt_ids"]) == [
        "<s>", "<user>", "tell", "me", "about", "space", "?", "</s>", "<assistant>"
    ]  # fmt: skip
    assert templated["chosen_ids"] == plain["chosen_ids"]


def test_encoder_tokenizer(bert_tokenizer, hh_test):
    """BERT: [CLS] prompt [SEP] response [SEP], BERT's own pair layout; no EOS exists."""
    tok = bert_tokenizer
    encoder = PairTokenizer(tok)
    assert encoder.style == "encoder" and encoder.end_ids == [tok.sep_token_id]
    tokenized = tokenize_pairs(hh_test.select(range(40)), tok)
    for row in tokenized.select(range(0, len(tokenized), 5)):
        assert row["prompt_ids"][0] == tok.cls_token_id and row["prompt_ids"][-1] == tok.sep_token_id
        assert row["chosen_ids"][-1] == tok.sep_token_id and tok.cls_token_id not in row["chosen_ids"]
        assert row["prompt_ids"] + row["chosen_ids"] == tok(row["prompt"], row["chosen"])["input_ids"]
    # message prompts without a chat template use the HH-RLHF layout
    data = _pairs([{"prompt": [{"role": "user", "content": "hi"}], "chosen": "hello", "rejected": "go away"}])
    row = tokenize_pairs(data, tok)[0]
    assert render_messages_plain([{"role": "user", "content": "hi"}]) == "\n\nHuman: hi\n\nAssistant:"
    assert tok.decode(row["prompt_ids"]) == "[CLS] human : hi assistant : [SEP]"
    with pytest.raises(ConfigError, match="no chat template"):
        PairTokenizer(tok, TokenizeConfig(chat_template_for_text=True))


def test_prompt_longer_than_budget(synthetic_tokenizer):
    """Over budget: dropped by default (the paper's filter); keep_end keeps BOS and the prompt's end."""
    tok = synthetic_tokenizer
    long_prompt = " ".join(["so ,"] * 20) + " tell me about music ?"  # 1 BOS + 45 tokens
    data = _pairs([
        {"prompt": long_prompt, "chosen": " melody guitar", "rejected": " steal"},
        {"prompt": "tell me about music ?", "chosen": " song", "rejected": " drum"},
    ])  # fmt: skip
    dropped = tokenize_pairs(data, tok, TokenizeConfig(max_length=24))
    assert dropped["id"] == ["r1"]
    assert get_filter_report(dropped).dropped == {"over_budget": 1}

    kept = tokenize_pairs(data, tok, TokenizeConfig(max_length=24, truncation="keep_end", min_prompt_tokens=4))
    row = kept[0]
    assert len(row["prompt_ids"]) + len(row["chosen_ids"]) == 24
    tokens = tok.convert_ids_to_tokens(row["prompt_ids"])
    assert tokens[0] == "<s>" and tokens[-5:] == ["tell", "me", "about", "music", "?"] and len(tokens) == 21
    assert tok.convert_ids_to_tokens(row["chosen_ids"]) == ["melody", "guitar", "</s>"]  # responses untouched
    assert get_filter_report(kept).notes == {"truncated": 1}


def test_truncation_never_leaves_an_empty_response(synthetic_tokenizer):
    tok = synthetic_tokenizer
    data = _pairs([{"prompt": "tell me about music ?", "chosen": " song " * 12, "rejected": " drum"}])
    # the prompt keeps at least min_prompt_tokens = 5 (+ BOS): one token of room is left for the responses
    cut = tokenize_pairs(data, tok, TokenizeConfig(max_length=7, truncation="keep_end", min_prompt_tokens=5))[0]
    assert tok.convert_ids_to_tokens(cut["chosen_ids"]) == ["song"]  # cut: it loses its EOS
    assert tok.convert_ids_to_tokens(cut["rejected_ids"]) == ["drum"]
    with pytest.raises(DataError, match="no pairs left"):
        tokenize_pairs(data, tok, TokenizeConfig(max_length=6, truncation="keep_end", min_prompt_tokens=5))
    mixed = _pairs([{"prompt": "tell me about music ?", "chosen": " song " * 12, "rejected": " drum"},
                    {"prompt": "hi ?", "chosen": " song", "rejected": " drum"}])  # fmt: skip
    result = tokenize_pairs(mixed, tok, TokenizeConfig(max_length=6, truncation="keep_end", min_prompt_tokens=5))
    assert get_filter_report(result).dropped == {"response_truncated_to_zero": 1}


def test_empty_response_and_identical_responses_are_dropped(smollm2_tokenizer):
    data = _pairs([
        {"prompt": "Q:", "chosen": "", "rejected": " no"},
        {"prompt": "Q:", "chosen": " same", "rejected": " same"},
        {"prompt": "Q:", "chosen": " yes", "rejected": "   "},
        {"prompt": "Q:", "chosen": " yes", "rejected": " no"},
    ])  # fmt: skip
    tokenized = tokenize_pairs(data, smollm2_tokenizer)
    assert tokenized["id"] == ["r3"]
    assert get_filter_report(tokenized).dropped == {"empty_response": 2, "identical_responses": 1}
    with pytest.raises(DataError, match="row 0, id 'r0': empty_response"):
        tokenize_pairs(data, smollm2_tokenizer, strict=True)


def test_prompts_only_and_sft_columns(synthetic_tokenizer):
    data = load_synthetic(20)
    prompts = tokenize_pairs(data, synthetic_tokenizer, TokenizeConfig(max_length=32), responses=())
    assert "chosen_ids" not in prompts.column_names and len(prompts) == 20
    sft = tokenize_pairs(data, synthetic_tokenizer, TokenizeConfig(max_length=32), responses=("chosen",))
    assert "rejected_ids" not in sft.column_names and sft["gold_reward_chosen"] == data["gold_reward_chosen"]


def test_missing_column_and_wrong_type(synthetic_tokenizer):
    with pytest.raises(DataError, match="missing column\\(s\\) \\['rejected'\\]"):
        tokenize_pairs(datasets.Dataset.from_list([{"prompt": "a", "chosen": "b"}]), synthetic_tokenizer)
    bad = datasets.Dataset.from_list([{"id": "x", "prompt": "a", "chosen": "b", "rejected": None}])
    with pytest.raises(DataError, match="rejected is a NoneType"):
        tokenize_pairs(bad, synthetic_tokenizer)


def test_cache_hit_and_key(tmp_path, synthetic_tokenizer, monkeypatch):
    data = load_synthetic(30)
    config = TokenizeConfig(max_length=32)
    first = tokenize_pairs(data, synthetic_tokenizer, config, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("tokenized-*"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("tokenised again instead of reading the cache")

    monkeypatch.setattr("cwpo.data.tokenization.PairTokenizer.encode_batch", fail)
    again = tokenize_pairs(data, synthetic_tokenizer, config, cache_dir=tmp_path)
    assert again.to_list() == first.to_list()
    assert get_filter_report(again).to_dict() == get_filter_report(first).to_dict()
    monkeypatch.undo()
    tokenize_pairs(data, synthetic_tokenizer, TokenizeConfig(max_length=33), cache_dir=tmp_path)
    tokenize_pairs(data.select(range(29)), synthetic_tokenizer, config, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("tokenized-*"))) == 3
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporary folders


def test_a_file_backed_dataset_reuses_its_datasets_cache_with_the_same_report(tmp_path, synthetic_tokenizer,
                                                                                monkeypatch):  # fmt: skip
    """Dataset.map's fingerprint cache: a dataset read from files is tokenised once; the second call reads the cached
    columns, drop reasons included, so its rows and its report are the first call's; other settings tokenise again."""
    load_synthetic(40).save_to_disk(str(tmp_path / "data"))
    data = datasets.load_from_disk(str(tmp_path / "data"))
    config = TokenizeConfig(max_length=20)  # drops some pairs: the report has something to lose
    first = tokenize_pairs(data, synthetic_tokenizer, config)
    assert get_filter_report(first).dropped and 0 < len(first) < 40
    calls = []
    encode_batch = PairTokenizer.encode_batch
    monkeypatch.setattr(PairTokenizer, "encode_batch", lambda self, *a: calls.append(1) or encode_batch(self, *a))
    again = tokenize_pairs(datasets.load_from_disk(str(tmp_path / "data")), synthetic_tokenizer, config)
    assert calls == []
    assert again.to_list() == first.to_list()
    assert get_filter_report(again).to_dict() == get_filter_report(first).to_dict()
    tokenize_pairs(data, synthetic_tokenizer, TokenizeConfig(max_length=21))
    assert calls


def test_strict_names_the_first_dropped_row(synthetic_tokenizer):
    rows = [{"prompt": "a b", "chosen": "c", "rejected": "d"}, {"prompt": "a", "chosen": "c", "rejected": "c"},
            {"prompt": "a", "chosen": " ", "rejected": "d"}]  # fmt: skip
    with pytest.raises(DataError, match=r"row 1.*identical_responses"):
        tokenize_pairs(_pairs(rows), synthetic_tokenizer, strict=True)


def test_fingerprints_are_content_hashes(synthetic_tokenizer, bert_tokenizer):
    a, b = load_synthetic(10), load_synthetic(10)
    assert dataset_fingerprint(a) == dataset_fingerprint(b)
    assert dataset_fingerprint(a.select(range(5))) == dataset_fingerprint(load_synthetic(5))
    assert dataset_fingerprint(a) != dataset_fingerprint(load_synthetic(10, seed=1))
    from cwpo.data.synthetic import build_tokenizer

    assert tokenizer_fingerprint(synthetic_tokenizer) == tokenizer_fingerprint(build_tokenizer())
    assert tokenizer_fingerprint(synthetic_tokenizer) != tokenizer_fingerprint(bert_tokenizer)


def test_config_validation():
    with pytest.raises(ConfigError):
        TokenizeConfig(truncation="left")
    with pytest.raises(ConfigError):
        TokenizeConfig(max_length=1)
    with pytest.raises(ConfigError):
        TokenizeConfig(style="seq2seq")


def test_keep_end_on_a_real_over_budget_pair(hh_test, smollm2_tokenizer):
    """The one over-budget pair of the first 120 keeps its prompt's end and both responses under keep_end."""
    tok = smollm2_tokenizer
    rows = hh_test.select(range(120))
    dropped = tokenize_pairs(rows, tok)
    (over_id,) = set(rows["id"]) - set(dropped["id"])
    over = rows.select([rows["id"].index(over_id)])
    config = TokenizeConfig(max_length=512, truncation="keep_end", min_prompt_tokens=64)
    row = tokenize_pairs(over, tok, config)[0]
    assert len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"])) == 512
    assert tok.decode(row["prompt_ids"]).endswith("\n\nAssistant:")
    full = tok(row["prompt"], add_special_tokens=False)["input_ids"]
    assert row["prompt_ids"] == full[len(full) - len(row["prompt_ids"]) :]  # the end of the prompt, exactly
    for name in ("chosen", "rejected"):
        ids = row[f"{name}_ids"]
        assert len(ids) >= 1 and tok.decode([i for i in ids if i != tok.eos_token_id]) in row[name]


# -- issue 14: what broke on the way to a real SmolLM2 run --------------------------------------------------------


def test_pad_equal_to_eos_keeps_every_response_eos_in_the_loss(smollm2_tokenizer):
    """SmolLM2 pads with its EOS (<|im_end|>): the collators' labels still hold the EOS that ends each response, so
    SFT and DPO learn to stop (a mask built by comparing ids with the pad id would drop it)."""
    from cwpo.data import PairCollator, SFTCollator

    tok = smollm2_tokenizer
    assert tok.pad_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    messages = [{"role": "user", "content": "Say hi."}]
    data = _pairs([{"prompt": messages, "chosen": "Hi!", "rejected": "No, I will not say anything at all."}])
    row = tokenize_pairs(data, tok)[0]
    pair = PairCollator(pad_token_id=tok.pad_token_id)([row])
    sft = SFTCollator(pad_token_id=tok.pad_token_id)([row])
    for labels, mask, response in ((pair["labels"][0], pair["attention_mask"][0], row["chosen_ids"]),
                                   (pair["labels"][1], pair["attention_mask"][1], row["rejected_ids"]),
                                   (sft["labels"][0], sft["attention_mask"][0], row["chosen_ids"])):  # fmt: skip
        kept = labels[labels != -100].tolist()
        assert kept == response and kept[-1] == tok.eos_token_id
        assert int(mask.sum()) == len(row["prompt_ids"]) + len(response)  # padding (also EOS ids) masked out
    assert (pair["input_ids"][0] == tok.eos_token_id).sum() > 1  # the short row is padded with EOS ids


def test_chat_template_is_never_applied_twice(smollm2_tokenizer):
    """A text prompt already rendered by the chat template (with chat_template_for_text on, or off) is used as it
    is: no second system turn and assistant header around it, and the same ids as the message prompt."""
    tok = smollm2_tokenizer
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    expected = tokenize_pairs(_pairs([{"prompt": messages, "chosen": "4", "rejected": "5"}]), tok)[0]
    for config in (TokenizeConfig(chat_template_for_text=True), TokenizeConfig()):
        row = tokenize_pairs(_pairs([{"prompt": rendered, "chosen": "4", "rejected": "5"}]), tok, config)[0]
        assert row["prompt_ids"] == expected["prompt_ids"]
        assert row["chosen_ids"] == expected["chosen_ids"]
        assert tok.decode(row["prompt_ids"]).count("<|im_start|>system") == 1
    # a plain text prompt is still templated when asked
    plain = tokenize_pairs(_pairs([{"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"}]), tok,
                           TokenizeConfig(chat_template_for_text=True))[0]  # fmt: skip
    assert plain["prompt_ids"] == expected["prompt_ids"]


def test_real_hh_dialogues_as_messages_keep_their_end_and_a_response(hh_harmless_test_path, smollm2_tokenizer):
    """Long real HH-RLHF dialogues through SmolLM2's chat template under a small budget (keep_end): every kept pair
    ends its prompt with the assistant header, keeps at least one response token, and the BPE boundary between
    "<|im_start|>assistant\\n" and the response never merges (the mask is exact: no fallback); a budget that leaves
    no room for a response drops the pair (counted) instead of keeping it with zero response tokens."""
    from cwpo.data import load_hh_rlhf

    tok = smollm2_tokenizer
    rows = load_hh_rlhf("harmless-base", "test", path=hh_harmless_test_path, as_messages=True, limit=60)
    config = TokenizeConfig(max_length=96, truncation="keep_end", min_prompt_tokens=64)
    tokenized = tokenize_pairs(rows, tok, config)
    report = get_filter_report(tokenized)
    assert report.notes.get("boundary_fallback", 0) == 0
    assert report.notes["truncated"] > 10  # the budget bites on many real dialogues
    header = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    for row in tokenized:
        assert len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"])) <= 96
        assert row["prompt_ids"][-len(header) :] == header
        for name in ("chosen", "rejected"):
            ids = row[f"{name}_ids"]
            assert len(ids) >= 1 and ids != [tok.eos_token_id]
            kept = [i for i in ids if i != tok.eos_token_id]
            assert kept and row[name].startswith(tok.decode(kept))
    # min_prompt_tokens = the whole budget: a long prompt leaves no room for a response token, so its pair is
    # dropped and counted, never kept with an empty response (strict: a DataError naming the row)
    tight = TokenizeConfig(max_length=64, truncation="keep_end", min_prompt_tokens=64)
    kept = tokenize_pairs(rows, tok, tight)
    assert get_filter_report(kept).dropped["response_truncated_to_zero"] > 10
    assert all(len(r["chosen_ids"]) >= 1 and len(r["rejected_ids"]) >= 1 for r in kept)
    with pytest.raises(DataError, match="response_truncated_to_zero"):
        tokenize_pairs(rows, tok, tight, strict=True)
