"""Dataset specs and parts: loader names, local files, D_L/D_U/test/all, mixtures."""

from __future__ import annotations

import json

import pytest

from cwpo.data import DatasetSpec, as_dataset_spec, get_filter_report, load_part, load_split
from cwpo.errors import ConfigError


def test_spec_from_values(tmp_path):
    assert as_dataset_spec("synthetic") == DatasetSpec("synthetic")
    assert as_dataset_spec("runs/x/d_u_annotated.jsonl") == DatasetSpec("local", path="runs/x/d_u_annotated.jsonl")
    assert as_dataset_spec({"name": "shp", "args": {"domains": ["askbaking"]}}).args == {"domains": ["askbaking"]}
    with pytest.raises(ConfigError, match="neither a dataset loader"):
        as_dataset_spec("hh_rlhf")
    with pytest.raises(ConfigError, match="unknown dataset loader 'hh'"):
        DatasetSpec("hh")
    with pytest.raises(ConfigError, match="needs a path"):
        DatasetSpec("local")


def test_synthetic_parts():
    spec = {"name": "synthetic", "args": {"n_pairs": 400}}  # the test split keeps its 200 pairs
    sizes = {part: len(load_part(spec, part)) for part in ("train", "test", "all", "d_l", "d_u")}
    assert sizes == {"train": 400, "test": 200, "all": 600, "d_l": 120, "d_u": 280}
    assert len(load_part(spec, "d_l", split_ratio=0.5, split_seed=3)) == 200
    with pytest.raises(ConfigError, match="part must be one of"):
        load_part(spec, "unlabelled")


def test_loader_arguments_are_checked():
    with pytest.raises(ConfigError, match="bad arguments for the 'synthetic' loader"):
        load_split({"name": "synthetic", "args": {"pairs": 10}})
    with pytest.raises(ConfigError, match="takes no path"):
        load_split({"name": "synthetic", "path": "x.jsonl"})


def test_hh_folder_spec(hh_harmless_test_path):
    data = load_split({"name": "harmless-base", "path": str(hh_harmless_test_path.parent)}, "test")
    assert len(data) == 2303


def test_local_file_with_held_out_test(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": f"q{i}", "chosen": " a", "rejected": " b"}) + "\n" for i in range(50))
    )
    spec = {"name": "local", "path": str(path), "test_fraction": 0.2}
    train, test = load_part(spec, "train"), load_part(spec, "test")
    assert (len(train), len(test)) == (40, 10)
    assert not set(train["id"]) & set(test["id"])
    assert len(load_part(spec, "all")) == 50
    assert (len(load_part(spec, "d_l")), len(load_part(spec, "d_u"))) == (12, 28)
    with pytest.raises(ConfigError, match="has no test part"):
        load_part(str(path), "test")
    assert len(load_part(str(path), "all")) == 50


def test_test_fraction_splits_a_loaders_one_file_into_train_and_test(hh_harmless_test_path):
    """The local HH-RLHF file is the loader's only split: ``test_fraction`` hash-splits it (by id) into a training
    part and a held-out test part, disjoint, the same at every call; D_L / D_U come from the training part only."""
    spec = {"name": "harmless-base", "path": str(hh_harmless_test_path), "args": {"limit": 200},
            "test_fraction": 0.25}  # fmt: skip
    train, test = load_part(spec, "train"), load_part(spec, "test")
    assert (len(train), len(test)) == (149, 50)  # 199 pairs (one of the first 200 has an empty response)
    assert not set(train["id"]) & set(test["id"])
    assert load_part(spec, "test")["id"] == test["id"]
    d_l, d_u = load_part(spec, "d_l"), load_part(spec, "d_u")
    assert set(d_l["id"]) | set(d_u["id"]) == set(train["id"]) and len(d_l) == round(0.3 * 149)
    other = load_part({**spec, "test_seed": 1}, "test")
    assert len(other) == 50 and set(other["id"]) != set(test["id"])


def test_mixture_spec_with_overlapping_ids():
    """Two seeds of the synthetic task share ids: the mixture prefixes each id with its source's name."""
    spec = {
        "name": "mixture",
        "args": {
            "sources": [{"name": "synthetic", "args": {"n_pairs": 80}},
                        {"name": "synthetic", "args": {"n_pairs": 80, "seed": 1}}],
            "proportions": [0.8, 0.2],
            "names": ["harmless", "helpful"],
            "n_pairs": 50,
        },
    }  # fmt: skip
    mixture = load_part(spec, "train")
    assert mixture["source"] == ["harmless"] * 40 + ["helpful"] * 10
    assert len(set(mixture["id"])) == 50 and mixture["id"][0].startswith("harmless/synthetic-train-")
    assert len(load_part(spec, "d_l")) == 15


def test_mixture_of_distinct_sources(fixtures):
    spec = {
        "name": "mixture",
        "args": {
            "sources": [{"name": "synthetic", "args": {"n_pairs": 80}}, {"name": "shp", "path": str(fixtures / "shp_train.jsonl")}],
            "proportions": [0.8, 0.2],
            "n_pairs": 20,
        },
    }  # fmt: skip
    mixture = load_part(spec, "train")
    assert mixture["source"].count("synthetic") == 16 and mixture["source"].count("shp") == 4
    assert get_filter_report(mixture).n_kept == 20
