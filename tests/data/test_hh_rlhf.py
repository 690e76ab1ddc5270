"""HH-RLHF loader: the real harmless-base test file (read in place from ../shared), splitting and combining."""

from __future__ import annotations

import json

import pytest

from cwpo.data import get_filter_report, load_hh_rlhf
from cwpo.data.hh_rlhf import dialogue_to_messages, parse_pair, split_dialogue
from cwpo.errors import ConfigError, DataError


def test_real_file_counts(hh_test):
    """2,312 rows: 2,303 parse; 5 pairs do not share a prompt, 4 have a whitespace-only response."""
    report = get_filter_report(hh_test)
    assert (report.n_read, report.n_kept, len(hh_test)) == (2312, 2303, 2303)
    assert report.dropped == {"no_shared_prompt": 5, "empty_response": 4}
    assert report.examples["no_shared_prompt"][0] == "hh-rlhf-harmless-base-test-1254"
    assert report.examples["empty_response"][0] == "hh-rlhf-harmless-base-test-86"
    assert set(hh_test["human_label"]) == {1}
    assert set(hh_test["source"]) == {"harmless-base"}


def test_real_rows_text(hh_test):
    first = hh_test[0]
    assert first["id"] == "hh-rlhf-harmless-base-test-0"
    assert first["prompt"].startswith("\n\nHuman: what are some pranks with a pen i can do?\n\nAssistant: Are you")
    assert first["prompt"].endswith("\n\nHuman: okay some of these do not have anything to do with pens\n\nAssistant:")
    assert first["chosen"] == (
        " No, sorry!  All of these involve a pen, the point is that you can get funny results by doing pranks with pens."
    )
    assert first["rejected"].startswith(" There are lots of funny things you can do with pens, here’s one example:")
    last = hh_test[-1]
    assert last["id"] == "hh-rlhf-harmless-base-test-2311"
    assert last["prompt"].endswith("\n\nHuman: Where is the human trade message board\n\nAssistant:")
    assert last["chosen"] == " I don’t know where the human trade message board is."
    assert last["rejected"] == " It’s private, I can only show you if you join."
    # dropped rows leave gaps in the ids: the id is the line number in the file
    assert "hh-rlhf-harmless-base-test-86" not in set(hh_test["id"][80:90])


def test_every_real_pair_rebuilds_the_original(hh_harmless_test_path, hh_test):
    """prompt + chosen is exactly the original dialogue, for every kept row."""
    import gzip

    with gzip.open(hh_harmless_test_path, "rt", encoding="utf-8") as f:
        raw = [json.loads(line) for line in f]
    for row in hh_test.select(range(0, len(hh_test), 97)):
        line = int(row["id"].rsplit("-", 1)[1])
        assert row["prompt"] + row["chosen"] == raw[line]["chosen"]
        assert row["prompt"] + row["rejected"] == raw[line]["rejected"]
        assert row["prompt"].endswith("\n\nAssistant:") and "\n\nAssistant:" not in row["chosen"]


def test_messages_form(hh_harmless_test_path):
    data = load_hh_rlhf("harmless-base", "test", path=hh_harmless_test_path, as_messages=True, limit=3)
    prompt = data[0]["prompt"]
    assert [m["role"] for m in prompt] == ["user", "assistant", "user", "assistant", "user"]
    assert prompt[0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert prompt[-1]["content"] == "okay some of these do not have anything to do with pens"
    assert data[0]["chosen"].startswith("No, sorry!")


def test_folder_layouts_and_combination(tmp_path, hh_harmless_test_path):
    """A folder in the hub's layout works; ``hh-rlhf`` = harmless-base + helpful-base."""
    (tmp_path / "harmless-base").mkdir()
    (tmp_path / "harmless-base" / "test.jsonl.gz").symlink_to(hh_harmless_test_path)
    helpful = [
        {
            "chosen": "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?",
            "rejected": "\n\nHuman: Hi\n\nAssistant: What.",
        },
        {"chosen": "\n\nHuman: 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: 2+3?\n\nAssistant: 5"},
    ]
    (tmp_path / "helpful-base-test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in helpful))
    combined = load_hh_rlhf("hh-rlhf", "test", path=tmp_path)
    assert len(combined) == 2303 + 1
    assert combined[-1]["id"] == "hh-rlhf-helpful-base-test-0"
    assert combined[-1]["chosen"] == " Hello! How can I help?"
    assert combined[-1]["source"] == "helpful-base"
    report = get_filter_report(combined)
    assert (report.n_read, report.n_kept) == (2314, 2304)
    assert report.dropped == {"no_shared_prompt": 6, "empty_response": 4}


def test_split_dialogue_and_messages():
    prompt, reply = split_dialogue("\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d")
    assert prompt == "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:"
    assert reply == " d"
    assert split_dialogue("no turns here") is None
    assert dialogue_to_messages(prompt) == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]


def test_parse_pair_drops_and_errors():
    assert parse_pair({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "no dialogue"}) == "no_shared_prompt"
    with pytest.raises(DataError, match="missing column 'rejected'"):
        parse_pair({"chosen": "x"})
    with pytest.raises(DataError, match="chosen is a int"):
        parse_pair({"chosen": 3, "rejected": "x"})


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="subset"):
        load_hh_rlhf("harmful-base", "test", path=tmp_path)
    with pytest.raises(ConfigError, match="split"):
        load_hh_rlhf("harmless-base", "dev", path=tmp_path)
    with pytest.raises(DataError, match="no file for split 'test'"):
        load_hh_rlhf("harmless-base", "test", path=tmp_path)
