"""Stage caching: finished stages are reused, unfinished ones redone, changed inputs recomputed."""

from __future__ import annotations

import pytest

from cwpo.pipeline.stages import MARKER, StageRunner


def _writer(calls: list[str], text: str):
    def fn(folder):
        calls.append(text)
        (folder / "out.txt").write_text(text)
        return {"text": text}

    return fn


def test_same_inputs_run_once_and_reuse_the_folder(tmp_path):
    calls: list[str] = []
    first = StageRunner(tmp_path).run("sft", {"lr": 1e-3}, _writer(calls, "a"))
    second = StageRunner(tmp_path).run("sft", {"lr": 1e-3}, _writer(calls, "b"))
    assert calls == ["a"]
    assert (first.cached, second.cached) == (False, True)
    assert second.path == first.path and second.summary == {"text": "a"}
    assert (second.path / "out.txt").read_text() == "a"


def test_changed_input_gets_a_new_stage(tmp_path):
    calls: list[str] = []
    runner = StageRunner(tmp_path)
    a = runner.run("po", {"beta": 0.1}, _writer(calls, "a"))
    b = runner.run("po", {"beta": 0.5}, _writer(calls, "b"))
    assert calls == ["a", "b"] and a.path != b.path
    assert runner.computed == [f"po/{a.key}", f"po/{b.key}"]


def test_interrupted_stage_is_redone_from_scratch(tmp_path):
    runner = StageRunner(tmp_path)

    def dies(folder):
        (folder / "partial.bin").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.run("annotate", {"n": 3}, dies)
    folder = tmp_path / "annotate" / runner.key("annotate", {"n": 3})
    assert (folder / "partial.bin").exists() and not (folder / MARKER).exists()

    calls: list[str] = []
    result = StageRunner(tmp_path).run("annotate", {"n": 3}, _writer(calls, "full"))
    assert calls == ["full"] and not result.cached
    assert not (result.path / "partial.bin").exists()


def test_interrupted_stage_keeps_only_the_work_it_resumes_from(tmp_path):
    runner = StageRunner(tmp_path)

    def dies(folder):
        (folder / "out.jsonl.parts").mkdir()
        (folder / "out.jsonl.parts" / "part-rank0.jsonl").write_text("done\n")
        (folder / "half.txt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        runner.run("annotate", {"x": 1}, dies, keep=("out.jsonl.parts",))
    seen = []

    def resumes(folder):
        seen.append(sorted(p.name for p in folder.iterdir()))
        return {"parts": (folder / "out.jsonl.parts" / "part-rank0.jsonl").read_text()}

    result = runner.run("annotate", {"x": 1}, resumes, keep=("out.jsonl.parts",))
    assert seen == [["inputs.json", "out.jsonl.parts"]] and result.summary == {"parts": "done\n"}


def test_a_file_is_hashed_once_until_it_changes(tmp_path, monkeypatch):
    from cwpo.pipeline import stages

    calls: list[str] = []
    real = stages.file_hash
    monkeypatch.setattr(stages, "file_hash", lambda path: calls.append(str(path)) or real(path))
    data = tmp_path / "big.jsonl"
    data.write_text('{"a": 1}\n')
    runner = StageRunner(tmp_path / "run")
    first = runner.key("sft", {"data": str(data)})
    assert StageRunner(tmp_path / "run").key("sft", {"data": str(data)}) == first  # from file_hashes.json
    assert len(calls) == 1
    data.write_text('{"a": 2}\n')  # same size, new content
    assert runner.key("sft", {"data": str(data)}) != first and len(calls) == 2


def test_the_key_holds_the_code(tmp_path, monkeypatch):
    from cwpo.pipeline import stages

    runner = StageRunner(tmp_path)
    before = runner.key("po", {"beta": 0.1})
    edited = {**stages.code_fingerprint(), "source": "edited"}
    monkeypatch.setattr(stages, "code_fingerprint", lambda: edited)
    assert runner.key("po", {"beta": 0.1}) != before
