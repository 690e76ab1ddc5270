"""The ``trl`` loader: TRL-format preference pairs (standard or conversational, explicit or implicit prompt) from
parquet files with the schema ``datasets`` writes for them, from the hub, under any column names."""

from __future__ import annotations

import json

import pytest

from cwpo.data import load_part, load_trl
from cwpo.errors import ConfigError, DataError


def _parquet(path, rows):
    from datasets import Dataset

    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(rows).to_parquet(str(path))
    return path


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def test_standard_explicit_prompt(tmp_path):
    rows = [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
            {"prompt": "Grass is", "chosen": " green.", "rejected": " purple."}]  # fmt: skip
    data = load_trl(path=_parquet(tmp_path / "prefs.parquet", rows))
    assert data["prompt"] == ["The sky is", "Grass is"] and data["chosen"] == [" blue.", " green."]
    assert data[0]["human_label"] == 1 and data[0]["source"] == "prefs" and data[0]["id"] == "prefs-train-0"


def test_conversational_explicit_prompt_keeps_the_messages_and_takes_the_assistant_turn(tmp_path):
    rows = [{"prompt": [{"role": "system", "content": "Be brief."}, user("What color is the sky?")],
             "chosen": [assistant("It is blue.")], "rejected": [assistant("It is green.")], "score_chosen": 8.0}]  # fmt: skip
    data = load_trl(path=_parquet(tmp_path / "data" / "train-00000-of-00001.parquet", rows), split="train")
    assert data[0]["prompt"] == [{"role": "system", "content": "Be brief."}, user("What color is the sky?")]
    assert data[0]["chosen"] == "It is blue." and data[0]["rejected"] == "It is green."
    assert data[0]["score_chosen"] == 8.0  # other columns pass through
    assert load_trl("train", path=tmp_path)["chosen"] == ["It is blue."]  # the hub folder layout


def test_implicit_prompts_are_what_both_responses_share(tmp_path):
    conversational = [{"chosen": [user("What color is the sky?"), assistant("It is blue.")],
                       "rejected": [user("What color is the sky?"), assistant("It is green.")]}]  # fmt: skip
    data = load_trl(path=_parquet(tmp_path / "conv.parquet", conversational))
    assert data[0]["prompt"] == [user("What color is the sky?")] and data[0]["chosen"] == "It is blue."
    standard = [{"chosen": "The sky is blue.", "rejected": "The sky is green."},
                {"chosen": "Sun: bright", "rejected": "Moon: dim"}]  # nothing shared: dropped, counted  # fmt: skip
    data = load_trl(path=_parquet(tmp_path / "std.parquet", standard))
    assert (data[0]["prompt"], data[0]["chosen"], data[0]["rejected"]) == ("The sky is", " blue.", " green.")
    from cwpo.data import get_filter_report

    assert len(data) == 1 and get_filter_report(data).dropped == {"no_shared_prompt": 1}


def test_a_column_map_reads_other_names(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps({"question": "Q?", "better": " yes", "worse": " no"}) + "\n")
    data = load_trl(path=path, columns={"prompt": "question", "chosen": "better", "rejected": "worse"})
    assert (data[0]["prompt"], data[0]["chosen"], data[0]["rejected"]) == ("Q?", " yes", " no")
    with pytest.raises(DataError, match=r"prefs.jsonl.*row 0.*missing column\(s\) \['good'\]"):
        load_trl(path=path, columns={"chosen": "good"})


def test_bad_rows_name_the_file_row_and_problem(tmp_path):
    rows = [{"prompt": [user("Q?")], "chosen": [assistant("a")], "rejected": [assistant("b")]},
            {"prompt": [user("Q?")], "chosen": [user("a"), assistant("b")], "rejected": [assistant("c")]}]  # fmt: skip
    with pytest.raises(DataError, match=r"bad.parquet.*row 1.*chosen holds the turns \['user', 'assistant'\]"):
        load_trl(path=_parquet(tmp_path / "bad.parquet", rows))
    with pytest.raises(ConfigError, match="exactly one of path"):
        load_trl()


def test_the_registry_splits_one_file_and_reads_the_hub(tmp_path, monkeypatch):
    import datasets

    rows = [{"prompt": f"Q{i}?", "chosen": f" yes {i}", "rejected": f" no {i}"} for i in range(40)]
    path = _parquet(tmp_path / "prefs.parquet", rows)
    spec = {"name": "trl", "path": str(path), "test_fraction": 0.25}
    train, test = load_part(spec, "train"), load_part(spec, "test")
    assert len(train) + len(test) == 40 and not set(train["prompt"]) & set(test["prompt"]) and len(test) > 0
    calls = []

    def load_dataset(hub_path, **kwargs):  # the real signature: load_dataset(path, name=None, ...)
        calls.append((hub_path, kwargs))
        return datasets.Dataset.from_parquet(str(path))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    hub = {"name": "trl", "args": {"hub_name": "org/prefs", "columns": {}}, "test_split": "test"}
    assert len(load_part(hub, "test")) == 40 and len(load_part(hub, "d_l", split_ratio=0.25)) == 10
    assert calls[0] == ("org/prefs", {"name": None, "split": "test"})
