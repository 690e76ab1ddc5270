"""The README's Python API example runs as written (its ``python`` cells after "The Python API, step by step")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.slow


def api_cells() -> list[str]:
    text = README.read_text()
    section = text.split("## The Python API, step by step", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_readme_api_example_annotates_fits_and_evaluates(tmp_path, monkeypatch, capsys):
    cells = api_cells()
    assert len(cells) == 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for cell in cells:
        exec(compile(cell, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    out = capsys.readouterr().out
    assert re.search(r"\d+ pairs labelled; agreement with the human labels: \d+\.\d%", out), out
    assert re.search(r"GRA of CW-DPO against its SFT model: \d+\.\d % ± \d+\.\d \(n = 40\)", out), out
    assert (tmp_path / "runs/notebook/cw-dpo/adapter_config.json").exists()
