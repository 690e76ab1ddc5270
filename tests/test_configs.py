"""Every YAML under configs/ parses, with the parser of the entry point that runs it.

- ``configs/<name>/`` where ``<name>`` is a ``cwpo.fit`` registry entry (annotator, pairrm, sft, policy): parsed by the
  fit CLI's own LightningCLI parser (types, ``class_path``s and argument links checked, nothing instantiated).
- ``configs/strategy/``: Lightning trainer fragments given as a second ``--config``; parsed together with a fit
  config, and the strategy instantiated on the CPU to check the DeepSpeed config dict it builds.
- ``configs/experiments/``: parsed by ``cwpo run``'s parser.
- anything else: valid YAML.
Every YAML starts with a comment giving the command that runs it (docs/STYLE.md).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from cwpo import fit

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL_YAMLS = sorted(CONFIGS.rglob("*.yaml")) + sorted(CONFIGS.rglob("*.yml"))
FIT_YAMLS = [p for p in ALL_YAMLS if p.parent.name in fit.REGISTRY]
STRATEGY_YAMLS = [p for p in ALL_YAMLS if p.parent.name == "strategy"]
EXPERIMENT_YAMLS = [p for p in ALL_YAMLS if p.parent.name == "experiments"]


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(CONFIGS)) for p in paths]


@pytest.fixture
def parse_only(monkeypatch):
    """Build the fit CLI on ``args`` with LightningCLI's parser, skipping instantiation; return the parsed config."""
    from lightning.pytorch.cli import LightningCLI

    monkeypatch.setattr(LightningCLI, "instantiate_classes", lambda self: None)

    def parse(name: str, args: list[str]):
        return fit.build_cli(name, args, run=False).config

    return parse


def test_configs_folder_holds_the_shipped_configs():
    names = set(_ids(ALL_YAMLS))
    assert {"sft/synthetic.yaml", "policy/synthetic.yaml", "policy/hh_local_tiny.yaml"} <= names
    assert {f"strategy/{n}.yaml" for n in ("zero2", "zero3", "zero3_offload", "ddp")} <= names


@pytest.mark.parametrize("path", ALL_YAMLS, ids=_ids(ALL_YAMLS))
def test_yaml_is_valid_and_starts_with_the_command_that_runs_it(path):
    text = path.read_text()
    assert isinstance(yaml.safe_load(text), dict), f"{path}: not a mapping"
    first = text.splitlines()[0]
    assert first.startswith("#"), f"{path}: the first line must be a comment with the command that runs it"
    comment = "\n".join(line for line in text.splitlines()[:6] if line.startswith("#"))
    assert "cwpo" in comment, f"{path}: the leading comment should give the command (python -m cwpo..., cwpo ...)"


@pytest.mark.parametrize("path", FIT_YAMLS, ids=_ids(FIT_YAMLS))
def test_fit_config_parses_through_the_fit_cli(path, parse_only):
    config = parse_only(path.parent.name, ["--config", str(path)])
    assert config.model.backbone.name_or_path  # the spec every module takes first
    # The link gave the datamodule the model's tokenizer.
    tokenizer = config.data.tokenizer
    tokenizer = tokenizer.get("name_or_path") if isinstance(tokenizer, dict) else tokenizer
    assert tokenizer == config.model.backbone.name_or_path


@pytest.mark.parametrize("path", STRATEGY_YAMLS, ids=_ids(STRATEGY_YAMLS))
def test_strategy_fragment_parses_with_a_model_config(path, parse_only):
    config = parse_only("policy", ["--config", str(CONFIGS / "policy" / "synthetic.yaml"), "--config", str(path)])
    strategy = config.trainer.strategy
    assert strategy.class_path == yaml.safe_load(path.read_text())["trainer"]["strategy"]["class_path"]
    assert config.trainer.precision == "bf16-mixed"


def _strategy(name: str):
    spec = yaml.safe_load((CONFIGS / "strategy" / f"{name}.yaml").read_text())["trainer"]["strategy"]
    module, _, cls = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), cls)(**spec.get("init_args", {}))


@pytest.mark.parametrize(
    ("name", "stage", "offloaded"),
    [("zero2", 2, False), ("zero3", 3, False), ("zero3_offload", 3, True)],
)
def test_deepspeed_strategy_builds_the_expected_config_dict(name, stage, offloaded):
    pytest.importorskip("deepspeed")
    strategy = _strategy(name)  # no CUDA needed to build it; only setup() refuses a CPU accelerator
    zero = strategy.config["zero_optimization"]
    assert zero["stage"] == stage
    assert strategy.zero_stage_3 == (stage == 3)
    assert strategy.config["zero_allow_untested_optimizer"] is True  # cwpo's own AdamW from configure_optimizers
    assert ("offload_optimizer" in zero and "offload_param" in zero) == offloaded
    if offloaded:
        assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "cpu"
        assert strategy.config["zero_force_ds_cpu_optimizer"] is False  # torch AdamW on offloaded weights


def test_ddp_strategy_builds():
    from lightning.pytorch.strategies import DDPStrategy

    strategy = _strategy("ddp")
    assert isinstance(strategy, DDPStrategy)
    assert strategy._ddp_kwargs == {"find_unused_parameters": False, "gradient_as_bucket_view": True}


@pytest.mark.parametrize("path", EXPERIMENT_YAMLS, ids=_ids(EXPERIMENT_YAMLS))
def test_experiment_config_parses_through_cwpo_run(path):
    from cwpo.run import parser

    parser().parse_args(["--config", str(path)])


@pytest.mark.parametrize("name", ["sft", "policy"])
def test_tiny_configs_instantiate_without_building_a_model(name, monkeypatch, tmp_path):
    """LightningCLI instantiates module, datamodule and trainer from the YAML; the model waits for configure_model."""
    monkeypatch.chdir(tmp_path)  # the trainer's default_root_dir (runs/...) lands here
    cli = fit.build_cli(name, ["--config", str(CONFIGS / name / "synthetic.yaml")], run=False)
    built = cli.model.model if name == "sft" else cli.model.policy
    assert built is None
    assert cli.model.lora.r == 8 and cli.model.optim.weight_decay == 0.05


PAPER_EXPERIMENTS = [p for p in EXPERIMENT_YAMLS if not p.name.startswith("hh-harmless-local")]


@pytest.mark.parametrize("path", PAPER_EXPERIMENTS, ids=_ids(PAPER_EXPERIMENTS))
def test_a_paper_experiment_trains_its_strong_model_as_its_fit_configs_do(path):
    """The strong stages of a paper experiment say what the ``cwpo fit`` configs of the same model say: gradient
    checkpointing, LoRA, the optimiser (weight decay, schedule, warm-up), log-prob path, reduction, epochs,
    accumulation and precision (batch sizes follow the experiment's devices and data)."""
    from cwpo.run import load_config

    config, _ = load_config(["--config", str(path)])
    strong = config.sft.model.backbone["name_or_path"]
    for stage in ("sft", "policy"):
        fit_yamls = [p for p in sorted((CONFIGS / stage).glob("*.yaml"))
                     if yaml.safe_load(p.read_text())["model"]["backbone"]["name_or_path"] == strong]  # fmt: skip
        assert fit_yamls, (stage, strong)
        fit_config = yaml.safe_load(fit_yamls[0].read_text())
        block = getattr(config, stage)
        model = fit_config["model"]
        assert block.model.gradient_checkpointing == model["gradient_checkpointing"] is True
        assert {k: getattr(block.model.lora, k) for k in ("r", "alpha", "dropout")} == {
            k: model["lora"][k] for k in ("r", "alpha", "dropout")}  # fmt: skip
        for key, value in model["optim"].items():
            assert getattr(block.model.optim, key) == value, (stage, key)
        for key in ("logps_impl", "reduction"):
            if key in model:
                assert getattr(block.model, key) == model[key], (stage, key)
        for key in ("max_epochs", "accumulate_grad_batches", "precision", "gradient_clip_val"):
            assert block.trainer[key] == fit_config["trainer"][key], (stage, key)
    assert "strategy" not in config.annotator.trainer and "strategy" not in config.trainer  # ZeRO-3: strong stages only
