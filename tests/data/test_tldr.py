"""TL;DR comparisons loader, on a fixture in the published schema."""

from __future__ import annotations

import json

import pytest

from cwpo.data import get_filter_report, load_tldr
from cwpo.errors import DataError


def test_fixture_rows(fixtures):
    data = load_tldr("train", path=fixtures / "tldr_comparisons_train.jsonl")
    assert len(data) == 3 and get_filter_report(data).dropped == {}
    first = data[0]
    assert first["prompt"] == (
        "SUBREDDIT: r/cats\n\nTITLE: New cat hides all day, how long does it take?\n\nPOST: I (24F) adopted a cat "
        "last month. She hides under the bed all day and only comes out at night to eat. I've tried treats and toys. "
        "How long until she feels at home?\n\nTL;DR:"
    )
    assert first["chosen"] == " My new cat hides all day; when will she settle in?"  # choice 0
    assert first["rejected"] == " cat is bad"
    assert first["post_id"] == "t3_1abcde" and first["id"] == "tldr-train-0" and first["source"] == "tldr"
    assert data[1]["chosen"] == " Roommate eats my labelled food despite talks; what now?"  # choice 1
    assert data[1]["rejected"] == " roommate food"
    assert data[2]["prompt"].startswith("ARTICLE: Heavy snow closed every school")
    assert data[2]["chosen"] == " Snow closed all county schools Monday; roads reopen by Wednesday."


def test_bad_choice_and_summaries(tmp_path):
    row = {"info": {"post": "p", "title": "t", "subreddit": "s"}, "summaries": [{"text": "a"}, {"text": "b"}],
           "choice": 2}  # fmt: skip
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match="row 0.*choice is 2"):
        load_tldr("train", path=tmp_path)
    row.update(choice=0, summaries=[{"text": "a"}])
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match="summaries holds 1 entries"):
        load_tldr("train", path=path)
    row.update(summaries=[{"text": "a"}, {"txt": "b"}])
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match="missing column 'text'"):
        load_tldr("train", path=path)


# The schemas of the two hub datasets as they publish them (their dataset cards' ``dataset_info``), so the local files
# below are what ``datasets`` downloads from them, read by the loader's real format handling.
def _openai_features():
    from datasets import Features, Value

    text = Value("string")
    return Features({
        "info": {"id": text, "post": text, "title": text, "subreddit": text, "site": text, "article": text},
        "summaries": [{"text": text, "policy": text, "note": text}],
        "choice": Value("int32"), "worker": text, "batch": text, "split": text, "extra": {"confidence": Value("int32")},
    })  # fmt: skip


def _trl_features():
    from datasets import Features, Value

    return Features({"prompt": Value("string"), "chosen": Value("string"), "rejected": Value("string")})


def _trl_rows(fixtures) -> list[dict]:
    """The fixture's comparisons as ``trl-lib/tldr-preference`` publishes them (prompt + summaries with a space)."""
    from cwpo.data.tldr import format_prompt

    rows = []
    for line in (fixtures / "tldr_comparisons_train.jsonl").read_text().splitlines():
        raw = json.loads(line)
        texts = [s["text"].strip() for s in raw["summaries"]]
        rows.append({"prompt": format_prompt(raw["info"]), "chosen": " " + texts[raw["choice"]],
                     "rejected": " " + texts[1 - raw["choice"]]})  # fmt: skip
    return rows


def test_the_parquet_revision_of_summarize_from_feedback_loads_from_its_folder_layout(fixtures, tmp_path):
    from datasets import Dataset

    rows = [json.loads(line) for line in (fixtures / "tldr_comparisons_train.jsonl").read_text().splitlines()]
    (tmp_path / "comparisons" / "train").mkdir(parents=True)
    Dataset.from_list(rows, features=_openai_features()).to_parquet(str(tmp_path / "comparisons/train/0000.parquet"))
    data = load_tldr("train", path=tmp_path)
    expected = load_tldr("train", path=fixtures / "tldr_comparisons_train.jsonl")
    assert data.to_list() == expected.to_list() and len(data) == 3


def test_trl_lib_tldr_preference_loads_from_its_hub_folder_layout(fixtures, tmp_path):
    from datasets import Dataset

    (tmp_path / "data").mkdir()
    Dataset.from_list(_trl_rows(fixtures), features=_trl_features()).to_parquet(
        str(tmp_path / "data/validation-00000-of-00001.parquet")
    )
    data = load_tldr("validation", path=tmp_path)
    original = load_tldr("train", path=fixtures / "tldr_comparisons_train.jsonl")
    assert data["prompt"] == original["prompt"] and data["chosen"] == original["chosen"]
    assert data["rejected"] == original["rejected"] and set(data["source"]) == {"tldr"}
    assert data[0]["id"] == "tldr-validation-0" and data[0]["human_label"] == 1


def test_the_hub_path_reads_trl_lib_with_the_real_format_handling(fixtures, tmp_path, monkeypatch):
    """Only the download is replaced: ``load_dataset`` serves the parquet file with the hub dataset's schema."""
    import datasets

    file = tmp_path / "train-00000-of-00001.parquet"
    datasets.Dataset.from_list(_trl_rows(fixtures), features=_trl_features()).to_parquet(str(file))
    calls = []

    def load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.Dataset.from_parquet(str(file))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    data = load_tldr("train")
    assert calls == [("trl-lib/tldr-preference", {"split": "train"})]
    assert data[1]["chosen"] == " Roommate eats my labelled food despite talks; what now?" and len(data) == 3
