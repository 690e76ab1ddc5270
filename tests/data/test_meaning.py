"""Data that parses but means something else: duplicates, responses that overlap the prompt (raw HH-RLHF records
given to the local loader), extra columns of mixed types, all-zero weights; and row numbers that are file lines."""

from __future__ import annotations

import json
import re

import pytest

from cwpo.data import get_filter_report, load_local
from cwpo.errors import DataError


def _write(path, rows, blank_after: int | None = None):
    lines = [json.dumps(r) for r in rows]
    if blank_after is not None:
        lines.insert(blank_after + 1, "")
    path.write_text("\n".join(lines) + "\n")
    return path


def _pair(i: int, **extra):
    return {"prompt": f"question {i}", "chosen": f"good answer {i}", "rejected": f"bad answer {i}", **extra}


def test_duplicate_pairs_are_dropped_and_counted_unless_kept(tmp_path):
    path = _write(tmp_path / "dup.jsonl", [_pair(0), _pair(1), _pair(0), _pair(0)])
    loaded = load_local(path)
    assert [r["id"] for r in loaded] == ["dup-0", "dup-1"]
    report = get_filter_report(loaded)
    assert report.dropped == {"duplicate": 2} and report.examples == {"duplicate": ["dup-2", "dup-3"]}
    assert len(load_local(path, keep_duplicates=True)) == 4


@pytest.mark.parametrize(
    "row, problem",
    [
        ({"prompt": "\n\nHuman: hi\n\nAssistant:", "chosen": "\n\nHuman: hi\n\nAssistant: hello",
          "rejected": "\n\nHuman: hi\n\nAssistant: go away"}, "chosen starts with the prompt (a raw HH-RLHF record?)"),
        ({"prompt": "hi", "chosen": "hello\n\nHuman: more?", "rejected": "no"},
         "chosen holds a '\\n\\nHuman:' turn"),
        ({"prompt": "Say: the capital of France is Paris.", "chosen": "no",
          "rejected": "the capital of France is Paris."}, "the prompt already contains rejected"),
    ],
)  # fmt: skip
def test_responses_that_overlap_the_prompt_are_refused_unless_allowed(tmp_path, row, problem):
    path = _write(tmp_path / "raw.jsonl", [_pair(0), row])
    with pytest.raises(DataError, match=re.escape(problem)) as caught:
        load_local(path)
    assert str(caught.value).startswith(f"{path}, row 1, id 'raw-1': ") and "allow_overlap=true" in str(caught.value)
    loaded = load_local(path, allow_overlap=True)
    assert len(loaded) == 2 and get_filter_report(loaded).notes == {"prompt_overlap": 1}


def test_an_assistant_repeating_an_earlier_reply_is_real_dialogue(tmp_path):
    """HH-RLHF's assistant often repeats itself: a response equal to an earlier *assistant* turn of a message prompt
    loads (the pipeline reloads its labelled D_U this way); the same text in a *user* turn is still refused."""
    reply = "Let me look into it. I'll get back to you with some ideas."
    dialogue = [{"role": "user", "content": "How do I do that?"}, {"role": "assistant", "content": reply},
                {"role": "user", "content": "What ideas?"}]  # fmt: skip
    path = _write(tmp_path / "repeat.jsonl", [{"prompt": dialogue, "chosen": reply, "rejected": "No."}])
    assert load_local(path)[0]["chosen"] == reply
    quoted = [{"role": "user", "content": f"Answer exactly: {reply}"}]
    path = _write(tmp_path / "quoted.jsonl", [{"prompt": quoted, "chosen": reply, "rejected": "No."}])
    with pytest.raises(DataError, match="the prompt already contains chosen"):
        load_local(path)


def test_row_numbers_are_file_lines_after_blank_and_dropped_lines(tmp_path):
    """Line 0 kept, line 1 dropped (empty response), line 2 blank, line 3 kept, line 4 repeats line 3's id."""
    rows = [_pair(0, id="a"), _pair(1, id="b", chosen=""), _pair(3, id="c"), _pair(4, id="c")]
    path = _write(tmp_path / "rows.jsonl", rows, blank_after=1)
    with pytest.raises(DataError, match=r"rows.jsonl, row 4, id 'c': id 'c' repeats \(first at row 3\)"):
        load_local(path)


def test_an_extra_column_of_mixed_types_names_the_column_and_the_rows(tmp_path):
    rows = [_pair(0, note="text"), _pair(1), _pair(2, note=7)]
    rows[1]["note"] = None
    path = _write(tmp_path / "mixed.jsonl", rows, blank_after=0)
    with pytest.raises(DataError) as caught:
        load_local(path)
    assert str(caught.value) == (
        f"{path}, row 3, id 'mixed-3': column 'note' is a int here but a str in row 0; one type per column "
        "(convert it, or drop the column)"
    )


def test_all_zero_confidences_are_refused_before_training(tmp_path):
    from cwpo.data.datamodules import PairDataModule

    path = _write(tmp_path / "zero.jsonl", [_pair(i, confidence=0.0) for i in range(4)])
    module = PairDataModule(dataset={"name": "local", "path": str(path)}, tokenizer="synthetic", part="all")
    with pytest.raises(DataError, match="every confidence of the 4 'all' pairs is 0"):
        module.setup()
    _write(path, [_pair(i, confidence=float(i == 0)) for i in range(4)])
    module = PairDataModule(dataset={"name": "local", "path": str(path)}, tokenizer="synthetic", part="all")
    module.setup()  # one non-zero weight is data to learn from
    assert len(module.train_dataset) == 4
