"""Part files, resume and merge of sharded annotation, with fake ranks (no model, no processes)."""

from __future__ import annotations

import json

import pytest

from cwpo.annotation.shards import (
    PartWriter,
    assign_batches,
    check_manifest,
    merge_parts,
    part_path,
    plan_batches,
    read_part,
    read_parts,
)
from cwpo.errors import CwpoError, DataError


def test_plan_batches_is_longest_first_and_stable():
    lengths = [3, 9, 3, 7, 9, 1, 3]
    assert plan_batches(lengths, 3) == [[1, 4, 3], [0, 2, 6], [5]]
    with pytest.raises(CwpoError):
        plan_batches(lengths, 0)


def test_assign_batches_deals_unfinished_batches_round_robin_and_drops_done_rows():
    batches = [[0, 1], [2, 3], [4, 5], [6, 7], [8]]
    assert assign_batches(batches, set(), 0, 2) == [[0, 1], [4, 5], [8]]
    assert assign_batches(batches, set(), 1, 2) == [[2, 3], [6, 7]]
    # Batch [2, 3] is finished and 4 is done: the rest is dealt again, batch company otherwise unchanged.
    assert assign_batches(batches, {2, 3, 4}, 0, 2) == [[0, 1], [6, 7]]
    assert assign_batches(batches, {2, 3, 4}, 1, 2) == [[5], [8]]
    with pytest.raises(CwpoError):
        assign_batches(batches, set(), 2, 2)


def _score(i: int) -> tuple[float, float]:
    return (i / 8, -i / 16)


def _run_rank(work_dir, rank: int, batches) -> None:
    writer = PartWriter(work_dir, rank)
    for batch in batches:
        writer.write(batch, [_score(i)[0] for i in batch], [_score(i)[1] for i in batch])
    writer.close()


def test_fake_ranks_write_shards_and_rank_zero_merges_in_row_order(tmp_path):
    n, world = 11, 3
    batches = plan_batches([i % 4 for i in range(n)], 2)
    for rank in range(world):
        _run_rank(tmp_path, rank, assign_batches(batches, set(), rank, world))
    assert sorted(p.name for p in tmp_path.glob("part-rank*.jsonl")) == [f"part-rank{r}.jsonl" for r in range(3)]
    assert merge_parts(tmp_path, n) == [_score(i) for i in range(n)]
    progress = json.loads((tmp_path / "progress-rank0.json").read_text())
    assert progress["pairs_done_this_run"] == sum(len(b) for b in assign_batches(batches, set(), 0, world))


def test_resume_with_a_different_world_size_scores_only_missing_rows(tmp_path):
    n = 10
    batches = plan_batches([1] * n, 2)  # [[0, 1], [2, 3], ..., [8, 9]]
    # A first run on 2 ranks: rank 0 finished its first batch only, rank 1 its first two, then both died.
    _run_rank(tmp_path, 0, assign_batches(batches, set(), 0, 2)[:1])
    _run_rank(tmp_path, 1, assign_batches(batches, set(), 1, 2)[:2])
    done = set(read_parts(tmp_path))
    assert done == {0, 1, 2, 3, 6, 7}
    with pytest.raises(CwpoError, match="4 of 10 pairs have no score"):
        merge_parts(tmp_path, n)
    # The rerun has 3 ranks: they share exactly the missing batches.
    shares = [assign_batches(batches, done, rank, 3) for rank in range(3)]
    assert sorted(i for share in shares for batch in share for i in batch) == [4, 5, 8, 9]
    for rank, share in enumerate(shares):
        _run_rank(tmp_path, rank, share)
    assert merge_parts(tmp_path, n) == [_score(i) for i in range(n)]


def test_a_torn_last_line_is_cut_and_its_pair_is_not_done(tmp_path):
    _run_rank(tmp_path, 0, [[0, 1]])
    path = part_path(tmp_path, 0)
    with open(path, "ab") as f:
        f.write(b'{"index": 2, "score_1": 0.5, "sco')  # a kill in the middle of a write
    assert set(read_part(path, repair=False)) == {0, 1}
    assert path.read_bytes().endswith(b"sco")
    _run_rank(tmp_path, 0, [[2]])  # the writer cuts the torn line before appending
    assert path.read_bytes().count(b"\n") == 3
    assert merge_parts(tmp_path, 3) == [_score(i) for i in range(3)]


def test_corruption_before_the_last_line_raises(tmp_path):
    path = part_path(tmp_path, 0)
    path.write_text(
        '{"index": 0, "score_1": 1.0, "score_2": 0.0}\nnot json\n{"index": 1, "score_1": 1, "score_2": 0}\n'
    )
    with pytest.raises(DataError, match="row 1"):
        read_part(path)


def test_conflicting_duplicates_raise(tmp_path):
    part_path(tmp_path, 0).write_text('{"index": 0, "score_1": 1.0, "score_2": 0.0}\n')
    part_path(tmp_path, 1).write_text('{"index": 0, "score_1": 2.0, "score_2": 0.0}\n')
    with pytest.raises(DataError, match="two part files"):
        read_parts(tmp_path)


def test_merge_refuses_indices_outside_the_data(tmp_path):
    _run_rank(tmp_path, 0, [[0, 5]])
    with pytest.raises(CwpoError, match="outside"):
        merge_parts(tmp_path, 2)


def test_manifest_guards_against_mixing_jobs(tmp_path):
    manifest = {"data": "abc", "batch_size": 4, "tokenize": {"max_length": 64}}
    check_manifest(tmp_path, manifest)
    check_manifest(tmp_path, dict(manifest))  # the same job resumes
    with pytest.raises(CwpoError, match=r"differs in: \['batch_size'\]"):
        check_manifest(tmp_path, {**manifest, "batch_size": 8})
