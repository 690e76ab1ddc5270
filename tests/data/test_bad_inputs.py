"""Bad input (issue #8): every class of problem ends in a DataError naming file, row and problem, or in a
counted drop; and random malformed records never escape as a bare KeyError/IndexError/TypeError."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cwpo.data import (
    TokenizeConfig,
    get_filter_report,
    load_hh_rlhf,
    load_local,
    load_shp,
    load_tldr,
    load_ultrafeedback,
    split_labelled,
    tokenize_pairs,
)
from cwpo.errors import CwpoError, DataError

# One valid raw row per loader, in the source's own schema, and how to call the loader on a file.
VALID = {
    "local": {"id": "a", "prompt": "Q?", "chosen": " yes", "rejected": " no", "human_label": 1, "confidence": 0.5},
    "hh-rlhf": {"chosen": "\n\nHuman: Q?\n\nAssistant: yes", "rejected": "\n\nHuman: Q?\n\nAssistant: no"},
    "ultrafeedback": {
        "prompt": "Q?",
        "chosen": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "yes"}],
        "rejected": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "no"}],
        "score_chosen": 8.0,
        "score_rejected": 2.0,
    },
    "tldr": {
        "info": {"post": "P", "title": "T", "subreddit": "s"},
        "summaries": [{"text": "a"}, {"text": "b"}],
        "choice": 0,
    },  # fmt: skip
    "shp": {
        "history": "Q?",
        "human_ref_A": "yes",
        "human_ref_B": "no",
        "labels": 1,
        "domain": "askbaking_train",
        "score_ratio": 3.0,
    },  # fmt: skip
}
LOADERS = {
    "local": lambda path: load_local(path),
    "hh-rlhf": lambda path: load_hh_rlhf("harmless-base", "train", path=path),
    "ultrafeedback": lambda path: load_ultrafeedback("train_prefs", path=path),
    "tldr": lambda path: load_tldr("train", path=path),
    "shp": lambda path: load_shp("train", path=path),
}
REQUIRED = {"local": "chosen", "hh-rlhf": "rejected", "ultrafeedback": "score_chosen", "tldr": "summaries",
            "shp": "human_ref_B"}  # fmt: skip
TEXT_FIELD = {"local": "chosen", "hh-rlhf": "chosen", "tldr": "choice", "shp": "history"}


def _write(path: Path, rows, *, raw_lines: tuple[bytes, ...] = ()) -> Path:
    with open(path, "wb") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")
        for line in raw_lines:
            f.write(line + b"\n")
    return path


@pytest.mark.parametrize("loader", LOADERS)
def test_malformed_json_line(loader, tmp_path):
    path = _write(tmp_path / "train.jsonl", [VALID[loader]], raw_lines=(b'{"prompt": "unterminated',))
    with pytest.raises(DataError, match=r"train.jsonl, row 1: malformed JSON"):
        LOADERS[loader](path)


@pytest.mark.parametrize("loader", LOADERS)
def test_non_utf8_bytes(loader, tmp_path):
    path = _write(tmp_path / "train.jsonl", [VALID[loader]], raw_lines=(b'{"prompt": "caf\xe9"}',))
    with pytest.raises(DataError, match=r"train.jsonl, row 1: not valid UTF-8"):
        LOADERS[loader](path)


@pytest.mark.parametrize("loader", LOADERS)
def test_missing_column_names_the_columns_present(loader, tmp_path):
    row = {k: v for k, v in VALID[loader].items() if k != REQUIRED[loader]}
    path = _write(tmp_path / "train.jsonl", [VALID[loader], row])
    with pytest.raises(
        DataError, match=rf"train.jsonl, row 1.*missing column.*{REQUIRED[loader]}.*columns present: \["
    ):
        LOADERS[loader](path)


@pytest.mark.parametrize("loader", TEXT_FIELD)
def test_wrong_type_where_text_belongs(loader, tmp_path):
    row = {**VALID[loader], TEXT_FIELD[loader]: 12.5}
    path = _write(tmp_path / "train.jsonl", [row])
    with pytest.raises(DataError, match=rf"train.jsonl, row 0.*{TEXT_FIELD[loader]} is a float"):
        LOADERS[loader](path)


def test_messages_without_roles(tmp_path):
    row = {**VALID["ultrafeedback"], "chosen": [{"content": "Q?"}, {"role": "assistant", "content": "yes"}]}
    with pytest.raises(DataError, match=r"row 0.*chosen message 0 has no 'role'"):
        load_ultrafeedback("train_prefs", path=_write(tmp_path / "u.jsonl", [row]))
    local = {**VALID["local"], "prompt": [{"role": "user"}]}
    with pytest.raises(DataError, match=r"row 0, id 'a': prompt message 0 has no 'content'"):
        load_local(_write(tmp_path / "l.jsonl", [local]))


@pytest.mark.parametrize("value", [math.nan, -0.2, 1.01])
def test_confidence_out_of_range(value, tmp_path):
    path = tmp_path / "annotated.jsonl"
    path.write_text(json.dumps(VALID["local"]) + "\n" + json.dumps({**VALID["local"], "id": "b", "confidence": value}))
    with pytest.raises(DataError, match=r"annotated.jsonl, row 1, id 'b': confidence is"):
        load_local(path)


@pytest.mark.parametrize("value", [2, -1, 0.5, "yes"])
def test_human_label_outside_0_1(value, tmp_path):
    path = _write(tmp_path / "a.jsonl", [{**VALID["local"], "human_label": value}])
    with pytest.raises(DataError, match=r"row 0, id 'a': human_label is .*, expected 0 or 1"):
        load_local(path)


def test_counted_drops(tmp_path):
    rows = [
        VALID["local"],
        {**VALID["local"], "id": "empty-prompt", "prompt": " "},
        {**VALID["local"], "id": "empty-response", "chosen": ""},
        {**VALID["local"], "id": "same", "rejected": " yes"},
    ]
    data = load_local(_write(tmp_path / "a.jsonl", rows))
    report = get_filter_report(data)
    assert data["id"] == ["a"]
    assert report.dropped == {"empty_prompt": 1, "empty_response": 1, "identical_responses": 1}
    assert report.examples == {"empty_prompt": ["empty-prompt"], "empty_response": ["empty-response"],
                               "identical_responses": ["same"]}  # fmt: skip
    hh = [VALID["hh-rlhf"], {"chosen": "\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: B\n\nAssistant: y"}]
    assert get_filter_report(load_hh_rlhf("harmless-base", "train", path=_write(tmp_path / "h.jsonl", hh))).dropped == {
        "no_shared_prompt": 1
    }
    with pytest.raises(DataError, match=r"a.jsonl, row 1, id 'empty-prompt': empty_prompt"):
        load_local(tmp_path / "a.jsonl", strict=True)


def test_budget_drops_and_zero_token_responses(synthetic_tokenizer, tmp_path):
    rows = [VALID["local"], {**VALID["local"], "id": "long", "prompt": "Q " * 40}]
    data = load_local(_write(tmp_path / "a.jsonl", rows))
    over = tokenize_pairs(data, synthetic_tokenizer, TokenizeConfig(max_length=10))
    assert get_filter_report(over).dropped == {"over_budget": 1}
    zero = tokenize_pairs(data, synthetic_tokenizer, TokenizeConfig(max_length=10, truncation="keep_end",
                                                                    min_prompt_tokens=9))  # fmt: skip
    assert get_filter_report(zero).dropped == {"response_truncated_to_zero": 1}


def test_empty_dataset_and_empty_split(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match=r"empty.jsonl: no pairs left after filtering"):
        load_local(tmp_path / "empty.jsonl")
    only_drops = _write(tmp_path / "drops.jsonl", [{**VALID["local"], "chosen": ""}])
    with pytest.raises(DataError, match=r"drops.jsonl: no pairs left after filtering .*empty_response 1"):
        load_local(only_drops)
    one = load_local(_write(tmp_path / "one.jsonl", [VALID["local"]]))
    with pytest.raises(DataError, match=r"D_L split is empty: 1 rows at fraction 0.3 put 0 in D_L .*one.jsonl"):
        split_labelled(one, 0.3)


# -- property-based: random malformed records never escape as anything but a CwpoError ----------------------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["", " ", "user", "assistant", "\n\nHuman: a\n\nAssistant: b"]),
)  # fmt: skip
_messages = st.lists(st.dictionaries(st.sampled_from(["role", "content", "name"]), _scalars, max_size=3), max_size=3)
_values = st.one_of(
    _scalars, _messages, st.lists(_scalars, max_size=3), st.dictionaries(st.text(max_size=5), _scalars, max_size=3)
)
_keys = st.sampled_from(sorted({k for row in VALID.values() for k in row} | {
    "id", "weak_score_chosen", "agrees_with_human", "source", "post", "text", "extra"}))  # fmt: skip


def _records(loader: str):
    mutated = st.builds(
        lambda changes, removed: {**{k: v for k, v in VALID[loader].items() if k not in removed}, **changes},
        st.dictionaries(_keys, _values, max_size=3),
        st.sets(st.sampled_from(sorted(VALID[loader])), max_size=2),
    )
    return st.one_of(mutated, st.dictionaries(_keys, _values, max_size=6))


_garbage = st.lists(st.one_of(st.binary(max_size=12), st.just(b"[1, 2]"), st.just(b"\xff\xfe")), max_size=1)


@pytest.mark.parametrize("loader", LOADERS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_malformed_records_parse_or_raise_cwpo_errors(loader, data, synthetic_tokenizer):
    rows = data.draw(st.lists(_records(loader), min_size=1, max_size=3))
    garbage = data.draw(_garbage)
    with tempfile.TemporaryDirectory() as folder:
        path = _write(Path(folder) / "train.jsonl", rows, raw_lines=tuple(garbage))
        try:
            loaded = LOADERS[loader](path)
        except CwpoError:
            return
        tokenized = None
        try:
            tokenized = tokenize_pairs(loaded, synthetic_tokenizer, TokenizeConfig(max_length=64))
        except CwpoError:
            return
        assert len(tokenized) <= len(loaded)
