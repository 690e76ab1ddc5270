"""The Table-1-style report: exact markdown cells, CSV/JSON content, valid PNGs, commands and config."""

from __future__ import annotations

import csv
import json

import pytest

from cwpo.errors import DataError
from cwpo.evaluation.report import build_report, format_cell, mean_std, results_table, summarize

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Human/DPO: 56, 57, 58 -> mean 57, sample std 1 -> "57.0 ± 1.0"
# CW/DPO: 60, 62 -> mean 61, sample std sqrt(2) = 1.414 -> "61.0 ± 1.4"
# Human/IPO: one seed 58.3 -> "58.3" (no ±); CW/IPO: no run -> "–"
ROWS = [
    {"method": "Human", "objective": "DPO", "seed": 0, "gra": 56.0, "ties": 1.0},
    {"method": "Human", "objective": "DPO", "seed": 1, "gra": 57.0, "ties": 0.0},
    {"method": "Human", "objective": "DPO", "seed": 2, "gra": 58.0, "ties": 2.0},
    {"method": "CW", "objective": "DPO", "seed": 0, "gra": 60.0, "ties": 0.5, "n": 200},
    {"method": "CW", "objective": "DPO", "seed": 1, "gra": 62.0, "ties": 0.5, "n": 200},
    {"method": "Human", "objective": "IPO", "seed": 0, "gra": 58.3, "ties": 0.0},
]

EXPECTED_TABLE = """\
| method | DPO | IPO |
| --- | ---: | ---: |
| Human | 57.0 ± 1.0 | 58.3 |
| CW | 61.0 ± 1.4 | – |
"""


def test_table_cells_are_mean_and_sample_std():
    assert results_table(ROWS) == EXPECTED_TABLE


def test_summary_values():
    summary = {(s["method"], s["objective"]): s for s in summarize(ROWS)}
    human = summary[("Human", "DPO")]
    assert (human["mean"], human["std"], human["n_seeds"], human["seeds"]) == (57.0, 1.0, 3, [0, 1, 2])
    assert human["ties_mean"] == pytest.approx(1.0)
    assert summary[("CW", "DPO")]["std"] == pytest.approx(2**0.5)
    assert summary[("Human", "IPO")]["std"] is None
    assert mean_std([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, (5 / 3) ** 0.5))
    assert format_cell(61.25, 0.05, decimals=2) == "61.25 ± 0.05"


def test_one_table_per_dataset():
    rows = [{**r, "dataset": "HH-RLHF"} for r in ROWS] + [
        {"dataset": "TL;DR", "method": "CW", "objective": "DPO", "seed": 0, "gra": 52.84}
    ]
    table = results_table(rows)
    assert table.startswith("### HH-RLHF\n\n" + EXPECTED_TABLE)
    assert table.endswith("### TL;DR\n\n| method | DPO |\n| --- | ---: |\n| CW | 52.8 |\n")


def test_bad_rows_name_the_row():
    with pytest.raises(DataError, match="row 1"):
        results_table([ROWS[0], {"method": "CW", "objective": "DPO", "seed": 0}])
    with pytest.raises(DataError, match="duplicate"):
        results_table([ROWS[0], dict(ROWS[0])])
    with pytest.raises(DataError, match="finite"):
        results_table([{**ROWS[0], "gra": float("nan")}])


def _annotated_records(n: int = 200):
    """Confidence rises with the row; the human agrees on every pair but every 5th of the lower half."""
    return [
        {"id": f"x-{i}", "confidence": i / n, "human_label": 0 if (i < n // 2 and i % 5 == 0) else 1} for i in range(n)
    ]


def test_build_report_writes_every_file(tmp_path):
    commands = ["cwpo run --config configs/hh.yaml --seed 0", "cwpo run --config configs/hh.yaml --seed 1"]
    config_text = "# cwpo run --config configs/hh.yaml\nstrong:\n  name_or_path: facebook/opt-1.3b\n"
    paths = build_report(
        ROWS,
        tmp_path / "report",
        commands=commands,
        config_text={"hh.yaml": config_text},
        annotated_records=_annotated_records(),
        title="HH-RLHF, OPT-125M -> OPT-1.3B",
    )
    assert set(paths) == {
        "markdown",
        "csv",
        "summary_csv",
        "json",
        "plot",
        "confidence_hist",
        "agreement_plot",
    }
    for path in paths.values():
        assert path.exists() and path.stat().st_size > 0
    for name in ("plot", "confidence_hist", "agreement_plot"):
        assert paths[name].read_bytes()[:8] == PNG_MAGIC
    assert not list((tmp_path / "report").glob(".*.tmp"))  # atomic writes left no temporaries

    markdown = paths["markdown"].read_text()
    assert markdown.startswith("# HH-RLHF, OPT-125M -> OPT-1.3B\n")
    assert EXPECTED_TABLE in markdown
    assert "| Human | 1.0 ± 1.0 | 0.0 |" in markdown  # ties table
    assert "```bash\n" + "\n".join(commands) + "\n```" in markdown
    assert "### hh.yaml\n\n```yaml\n" + config_text + "```" in markdown
    assert "![GRA (%) by method](gra_by_method.png)" in markdown
    assert "Agreement with humans: all pairs 90.0 %, top 30 % most confident 100.0 %." in markdown

    with open(paths["csv"], newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(ROWS) and csv_rows[3]["n"] == "200" and csv_rows[0]["n"] == ""
    with open(paths["summary_csv"], newline="") as f:
        assert [(r["method"], r["objective"], r["n_seeds"]) for r in csv.DictReader(f)] == [
            ("Human", "DPO", "3"),
            ("CW", "DPO", "2"),
            ("Human", "IPO", "1"),
        ]
    saved = json.loads(paths["json"].read_text())
    assert saved["rows"] == ROWS and saved["commands"] == commands and saved["config"] == {"hh.yaml": config_text}
    assert saved["annotator"]["n_labelled"] == 200


def test_build_report_without_annotations_or_commands(tmp_path):
    paths = build_report(ROWS[:3], tmp_path, config_text="a: 1\n")
    assert "confidence_hist" not in paths and paths["plot"].read_bytes()[:8] == PNG_MAGIC
    markdown = paths["markdown"].read_text()
    assert "(no commands recorded)" in markdown and "### config\n\n```yaml\na: 1\n```" in markdown
