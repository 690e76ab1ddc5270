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
