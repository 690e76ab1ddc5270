"""``cwpo evaluate --model FOLDER``: a trained adapter or model against its reference, as ``cwpo run`` reports it.

The model's and the reference's answers to the test prompts (generation), the gold judge's verdict on each pair
(wins / ties / losses, GRA, mean gold reward ± SE, lengths, EOS rate), and the held-out preference accuracy of the
model's implicit reward ``log π(y|x) − log π_ref(y|x)`` against gold: the rows, and the report, of ``cwpo run``,
computed by the same stages (cached under ``--output``).

``--model`` is an adapter folder exported by ``cwpo fit`` (its base and SFT adapter are read from
``cwpo_backbone.json``) or a full model folder. ``--reference`` defaults to the model an adapter was trained from
(its base with the SFT adapter merged); a full model needs one.

Examples:
    cwpo evaluate --model runs/policy/synthetic/adapter --data synthetic --test_prompts 200
    cwpo evaluate --model runs/policy/model --reference runs/sft/model --data '{name: local, path: pairs.jsonl,
        test_fraction: 0.1}' --eval.judge '{kind: reward_model, spec: org/rm}'
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from cwpo.pipeline.config import EvalConfig


def _resolve(folder: str) -> tuple[Any, str | None, str | None]:
    """``(base spec, init adapter, adapter)`` of an exported adapter folder, or ``(spec, None, None)`` of a model."""
    from cwpo.errors import ConfigError
    from cwpo.models import ModelSpec, as_model_spec
    from cwpo.modules.export import ADAPTER_CONFIG, BACKBONE_FILE

    path = Path(folder)
    if not path.is_dir():
        raise ConfigError(f"{folder} is not a folder; give an adapter folder exported by cwpo fit, or a model folder")
    if (path / ADAPTER_CONFIG).exists():
        if not (path / BACKBONE_FILE).exists():
            raise ConfigError(f"{folder} is an adapter without {BACKBONE_FILE}, so its base is unknown; give the "
                              "merged model (cwpo export merge) instead")  # fmt: skip
        recorded = json.loads((path / BACKBONE_FILE).read_text())
        return as_model_spec(recorded["backbone"]), recorded.get("init_adapter"), str(path)
    if not (path / "config.json").exists():
        raise ConfigError(f"{folder} holds neither an adapter ({ADAPTER_CONFIG}) nor a model (config.json)")
    return ModelSpec(str(path)), None, None


def evaluate(
    model: str,
    reference: str | None = None,
    data: Any = "synthetic",
    test_prompts: int | None = 500,
    max_length: int = 64,
    chat_template_for_text: bool = False,
    eval: EvalConfig = EvalConfig(),  # noqa: B008 - a frozen-by-use default, as jsonargparse reads it
    seed: int = 0,
    output: str = "runs/evaluate",
    name: str | None = None,
) -> list[dict[str, Any]]:
    """Evaluate ``model`` against ``reference``; return the report row (one) and write the report.

    Args:
        model: an exported adapter folder or a model folder.
        reference: the model the answers are compared with and the implicit reward is taken against (default:
            an adapter's own starting model; required for a full model).
        data: a :class:`cwpo.data.DatasetSpec` value; its ``test`` part gives the prompts and the held-out pairs.
        test_prompts: at most this many test prompts (``None``: all).
        max_length: token budget per held-out pair.
        chat_template_for_text: text prompts through the tokenizer's chat template.
        eval: generation and judge settings (as ``cwpo run``'s ``eval``).
        seed: the sampling seed.
        output: folder of the cached stages and the report (``<output>/report/report.md``).
        name: the method name in the report (default: the model folder's name).
    """
    from cwpo.errors import ConfigError
    from cwpo.io import stable_hash
    from cwpo.pipeline.config import DataConfig, ExperimentConfig, SFTModel, SFTStage, validate
    from cwpo.pipeline.experiment import Experiment, _quiet
    from cwpo.pipeline.stages import FileHasher, StageResult

    base, init_adapter, adapter = _resolve(model)
    if reference is None:
        if adapter is None:
            raise ConfigError(f"{model} is a full model: give --reference (the model it was trained from)")
        ref_base, ref_init, ref_adapter = base, init_adapter, None
    else:
        ref_base, ref_init, ref_adapter = _resolve(reference)
    config = ExperimentConfig(
        name=f"cwpo evaluate {model}",
        run_dir=output,
        seeds=[seed],
        methods=["human"],
        data=DataConfig(
            dataset=data,
            max_length=max_length,
            test_prompts=test_prompts,
            chat_template_for_text=chat_template_for_text,
        ),  # fmt: skip
        sft=SFTStage(model=SFTModel(backbone=base.identity())),
        pretrain=None,
        eval=eval,
    )
    validate(config)
    experiment = Experiment(config)
    hasher = FileHasher(Path(output) / "file_hashes.json")

    def stage(spec, folders: list[str | None]) -> StageResult:
        """A model as a finished stage, keyed by its spec and the content of its folders (weights, adapters)."""
        files = [hasher.hash(f) if f and Path(f).exists() else None for f in folders]
        key = stable_hash({"spec": spec.identity(), "files": files})
        return StageResult("model", key, Path(next((f for f in reversed(folders) if f), output)), {}, cached=True)

    evaluated = stage(base, [base.name_or_path, init_adapter, adapter])
    against = stage(ref_base, [ref_base.name_or_path, ref_init, ref_adapter])
    hasher.store()
    with _quiet():
        answers = experiment.generate(seed, evaluated, (base, init_adapter), adapter)
        reference_answers = experiment.generate(seed, against, (ref_base, ref_init), ref_adapter)
        heldout = experiment.heldout(seed, evaluated, against, (base, init_adapter), adapter,
                                     reference_model=(ref_base, ref_init), reference_adapter=ref_adapter)  # fmt: skip
        row = {"method": name or Path(model).name, "family": name or Path(model).name, "objective": "-",
               "seed": seed, **experiment.gra(answers, reference_answers), **heldout.summary}  # fmt: skip
    from cwpo.evaluation.report import build_report

    command = " ".join(["cwpo evaluate", *sys.argv[1:]]) if sys.argv else "cwpo evaluate"
    paths = build_report([row], Path(output) / "report", commands=[command], title=config.name)
    row["report"] = str(paths.get("markdown"))
    return [row]


def main(argv: list[str] | None = None) -> int:
    """``cwpo evaluate``: a user error prints one line and returns 2 (``--debug``: its traceback)."""
    from cwpo.errors import run_command

    return run_command(_main, list(sys.argv[1:] if argv is None else argv))


def _main(argv: list[str]) -> int:
    import logging

    from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser

    from cwpo.errors import argument_error

    parser = ArgumentParser(prog="cwpo evaluate", description=__doc__.split("\n\n")[0], exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML of these arguments")
    parser.add_function_arguments(evaluate, None, as_group=False)
    try:
        namespace = parser.parse_args(argv)
    except ArgumentError as err:
        raise argument_error(err, "cwpo evaluate") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    values = parser.instantiate_classes(namespace).as_dict()
    values.pop("config", None)
    if isinstance(values.get("eval"), dict):
        values["eval"] = EvalConfig(**values["eval"])
    row = evaluate(**values)[0]
    report = Path(row["report"])
    print(report.read_text() if report.exists() else "")
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
