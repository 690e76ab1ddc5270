"""The bad inputs of issue 16, item 6: each fails at once with one line that says what is wrong and what to do."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cwpo.errors import ConfigError, DataError
from cwpo.models import ModelSpec, load_tokenizer

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "tests" / "reliability" / "configs"


def test_a_local_model_folder_that_does_not_exist(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_tokenizer(ModelSpec(str(tmp_path / "runs" / "sft" / "model")))
    assert str(caught.value) == (
        f"model folder {tmp_path}/runs/sft/model does not exist; give an existing folder, package:<name>, or a hub "
        "name such as org/model"
    )
    with pytest.raises(ConfigError, match="model folder runs/nope/model does not exist"):
        load_tokenizer(ModelSpec("runs/nope/model"))


def test_a_hub_model_not_in_the_cache_while_offline_fails_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        load_tokenizer(ModelSpec("no-such-org/no-such-model"))
    assert time.perf_counter() - start < 2.0
    assert str(caught.value) == (
        "no-such-org/no-such-model is not in the Hugging Face cache and HF_HUB_OFFLINE is set; download it first "
        "(huggingface-cli download), or give a local folder"
    )


def test_a_hub_model_with_no_network_fails_after_one_quick_connection_attempt(monkeypatch):
    import socket

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    attempts = []

    def unreachable(address, timeout=None):
        attempts.append((address, timeout))
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(ConfigError) as caught:
        load_tokenizer(ModelSpec("no-such-org/no-such-model"))
    assert attempts == [(("huggingface.co", 443), 3)]
    assert str(caught.value) == (
        "cannot reach huggingface.co to download no-such-org/no-such-model ([Errno 101] Network is unreachable); "
        "give a local folder, or put the model in the cache and set HF_HUB_OFFLINE=1"
    )


def test_a_folder_given_as_a_data_file(tmp_path):
    from cwpo.data import load_local

    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(DataError) as caught:
        load_local(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path}: is a folder, not a data file (it holds train.jsonl); give the path of one .jsonl/.parquet file"
    )


def test_a_gzip_file_named_jsonl(tmp_path):
    from cwpo.data import load_local

    path = tmp_path / "pairs.jsonl"
    path.write_bytes(gzip.compress(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}).encode()))
    with pytest.raises(DataError) as caught:
        load_local(path)
    assert str(caught.value) == f"{path}: is gzip-compressed but named .jsonl; rename it to pairs.jsonl.gz"
    path.rename(tmp_path / "pairs.jsonl.gz")
    assert len(load_local(tmp_path / "pairs.jsonl.gz")) == 1


def test_val_part_null_trains_without_validation(tmp_path, monkeypatch):
    from cwpo import fit

    monkeypatch.chdir(tmp_path)
    cli = fit.build_cli("annotator", ["--config", str(CONFIGS / "annotator.yaml"), "--data.val_part", "null",
                                      "--trainer.max_steps", "2"])  # fmt: skip
    assert cli.trainer.global_step == 2 and cli.datamodule.val_dataset is None


def test_the_fit_command_prints_one_line_for_bad_input(tmp_path):
    """The real command: a missing model folder is one ``error:`` line and exit status 2, no traceback."""
    missing = tmp_path / "missing-model"
    result = subprocess.run(
        [sys.executable, "-m", "cwpo.fit", "--model", "sft", "--config", str(CONFIGS / "sft.yaml"),
         "--model.backbone", json.dumps({"name_or_path": str(missing)}), "--trainer.max_steps", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert f"error: model folder {missing} does not exist" in result.stderr


def test_a_json_file_holding_a_data_list_is_read(tmp_path):
    """``{"data": [...]}`` (the layout of some exports): its rows, numbered by their position in the list."""
    from cwpo.data import load_local

    path = tmp_path / "pairs.json"
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "c", "rejected": 7}]
    path.write_text(json.dumps({"data": rows[:1]}, indent=2))
    assert [r["chosen"] for r in load_local(path)] == ["a"]
    path.write_text(json.dumps({"data": rows}))
    with pytest.raises(DataError, match=r"pairs.json, row 1, id 'pairs-1': rejected is a int \(7\), expected text"):
        load_local(path)
