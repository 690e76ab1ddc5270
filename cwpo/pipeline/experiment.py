"""Every stage of a CW-PO experiment, cached: annotator → annotate → SFT → PO → generate → judge, per seed.

A stage's key is the config fields it reads (each stage declares them: the ``*_READS`` tuples below, audited by
``tests/pipeline/test_stage_keys.py``), the keys of the stages it reads, the content of the local files those
fields name, and the code (see :mod:`cwpo.pipeline.stages`). So a rerun reuses every finished stage, an
interrupted run resumes at the stage it stopped in, and changing one setting reruns exactly the stages that read
it and those downstream of them.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from cwpo.errors import ConfigError
from cwpo.io import plain_data, write_json
from cwpo.models import ModelSpec, as_model_spec, hidden_size, packaged_model_path
from cwpo.pipeline.config import (
    AnnotateConfig,
    AnnotatorModel,
    ExperimentConfig,
    OnlineModel,
    PolicyModel,
    PretrainModel,
    SFTModel,
    WeakPolicyModel,
    WeakSFTModel,
    block_arguments,
)
from cwpo.pipeline.console import LOGGERS, finish_wandb, stage_bar, stage_logger
from cwpo.pipeline.console import quiet as _quiet
from cwpo.pipeline.methods import MethodSpec, parse_method
from cwpo.pipeline.stages import StageResult, StageRunner, unwrap
from cwpo.precision import resolve_precision

log = logging.getLogger(__name__)

OBJECTIVE_TITLES = {"dpo": "DPO", "ipo": "IPO", "rdpo": "rDPO"}
# The numbers of a result row a model card reports.
CARD_METRICS = ("gra", "gra_se", "wins", "ties", "losses", "mean_gold_reward", "gold_reward_se", "gold_gain",
                "gold_gain_se", "mean_length", "eos_rate", "heldout_gold_accuracy", "heldout_human_accuracy",
                "annotator_val_accuracy", "weak_label_agreement")  # fmt: skip

# The config fields each stage reads (dotted paths of ExperimentConfig); a stage's key holds their values. A model
# block is read field by field (``sft.model.optim``), a stage's data and trainer blocks whole. Every training stage
# reads the shared Trainer settings and precision (``auto`` looks at its backbone's width) and the shared data.
_SHARED_TRAINER = ("trainer", "precision")
_DATAMODULE = ("data.dataset", "data.max_length", "data.chat_template_for_text", "data.truncation")
_SPLIT = ("data.split_ratio",)  # read by the stages that train on or label D_L / D_U


def _block(section: str, cls: type) -> tuple[str, ...]:
    return tuple(f"{section}.{f.name}" for f in dataclasses.fields(cls))


def _stage(name: str, model: type) -> tuple[str, ...]:
    return (*_block(f"{name}.model", model), f"{name}.data", f"{name}.trainer")


_WS_BACKBONE = ("annotator.model.backbone", "ws_sft.model.backbone")  # WS-DPO's weak causal LM
ANNOTATOR_READS = (*_SHARED_TRAINER, *_stage("annotator", AnnotatorModel), *_DATAMODULE, *_SPLIT)
ANNOTATE_READS = (*_SHARED_TRAINER, "annotator.trainer", "annotator.model.backbone", *_block("annotate", AnnotateConfig),
                  *_DATAMODULE, *_SPLIT)  # fmt: skip
WS_SFT_READS = (*_SHARED_TRAINER, *_WS_BACKBONE, *_stage("ws_sft", WeakSFTModel), *_DATAMODULE, *_SPLIT)
WS_POLICY_READS = (*_SHARED_TRAINER, *_WS_BACKBONE, *_stage("ws_policy", WeakPolicyModel), *_DATAMODULE, *_SPLIT)
WS_ANNOTATE_READS = (*_DATAMODULE, *_SPLIT, "ws_policy.model.beta", "annotate.confidence")
PRETRAIN_READS = (*_SHARED_TRAINER, "sft.model.backbone", "pretrain.texts", *_stage("pretrain", PretrainModel),
                  *_DATAMODULE)  # fmt: skip
SFT_READS = (*_SHARED_TRAINER, *_stage("sft", SFTModel), *_DATAMODULE)
PO_READS = (*_SHARED_TRAINER, "sft.model.backbone", *_stage("policy", PolicyModel), *_DATAMODULE)
# online: the policy.model arguments OnlinePolicyModule takes, its own block, its prompts, the judge it monitors
ONLINE_ONLY_POLICY = ("reference_batch_size", "prefix_sharing")  # PolicyModule's, not OnlinePolicyModule's
ONLINE_PO_READS = (*(r for r in PO_READS if r.rsplit(".", 1)[-1] not in (*ONLINE_ONLY_POLICY, "data")),
                   *_block("online.model", OnlineModel), "online.data", "eval.judge")  # fmt: skip
GENERATE_READS = (*_SHARED_TRAINER, "sft.model.backbone", "data.dataset", "data.test_prompts",
                  "data.chat_template_for_text", "eval.max_new_tokens", "eval.temperature", "eval.top_p",
                  "eval.batch_size", "eval.stop_strings", "eval.backend", "eval.max_prompt_length")  # fmt: skip
TEST_LOGPS_READS = (*_SHARED_TRAINER, "sft.model.backbone", *_DATAMODULE, "policy.model.logps_impl")
HELDOUT_READS: tuple[str, ...] = ()  # two test_logps tables compared: what they read is in their keys
DEQUANTIZE_READS: tuple[str, ...] = ()  # the GGUF spec is the stage's input
# Fields no stage reads: they decide which stages run (seeds, methods; the method and the seed are in the stages'
# inputs), where they go (run_dir), the report's title (name) and speed (torch_threads).
ORCHESTRATION_FIELDS = (
    "name",
    "run_dir",
    "seeds",
    "methods",
    "torch_threads",
    "logger",
    "verbose",
    "eval.show_generations",
)


def _spec(value: Any, seed: int) -> ModelSpec:
    """The model spec for one seed: its ``seed`` differs per seed, for every backbone, since it seeds both a random
    initialisation and the init of a LoRA adapter put on the model (pretrained weights load the same for any seed)."""
    spec = as_model_spec(value if not isinstance(value, dict) else dict(value))
    return dataclasses.replace(spec, seed=spec.seed + 1000 * seed)


def _trainer(folder: Path, settings: dict[str, Any], *, validate: bool = False, logger: Any = None,
             progress: str | None = None):  # fmt: skip
    """A stage's Trainer from its settings (the shared ``trainer`` with the stage's own block over it; its
    ``max_epochs`` the stage's epochs); ``logger``: its own logger (:meth:`Experiment._logger`; default a CSV log in
    ``folder``); ``progress``: the label of a progress bar on stderr (``None``: no bar).
    A ``logger`` in the settings may only be ``false``: one logger object shared by every stage would write them
    all into one log; ``--logger`` picks the kind, and each stage gets its own."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    extra = dict(settings)
    if "logger" in extra:
        if extra.pop("logger") is not False:
            raise ConfigError("trainer.logger would be one logger shared by every stage; choose the kind with "
                              f"--logger ({'|'.join(LOGGERS)}), each stage gets its own, or set trainer.logger: false")  # fmt: skip
        logger = False
    if progress:  # stdout holds the results: Lightning's own bars (tqdm or rich) write there
        extra["callbacks"] = [stage_bar(progress), *(extra.get("callbacks") or [])]
    settings = {
        "default_root_dir": str(folder),
        "logger": CSVLogger(str(folder), name="logs", version=0) if logger is None else logger,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 10,
        "deterministic": True,
        **({} if validate else {"limit_val_batches": 0}),
        **extra,
    }
    return L.Trainer(**settings)


def _with_precision(config: ExperimentConfig, settings: dict[str, Any], backbone: Any) -> dict[str, Any]:
    """``settings`` with the Lightning precision that ``config.precision`` gives for ``backbone`` (an explicit
    ``precision`` in them wins)."""
    extra = dict(settings)
    if "precision" not in extra:
        # Only ``auto`` looks at the model's width (its config: a hub read for a hub model).
        spec = as_model_spec(backbone if not isinstance(backbone, dict) else dict(backbone))
        hidden = hidden_size(spec) if config.precision == "auto" else None
        extra["precision"] = resolve_precision(
            config.precision, hidden_size=hidden, accelerator=extra.get("accelerator")
        )
    return extra


def _metric(trainer, name: str) -> float | None:
    value = trainer.callback_metrics.get(name)
    return None if value is None else float(value)


class Experiment:
    """Runs an :class:`ExperimentConfig`; :meth:`run` returns one result row per (method, seed)."""

    def __init__(self, config: ExperimentConfig):
        from cwpo.pipeline.config import validate

        validate(unwrap(config), data=False)  # every problem of the config's values at once (run() adds the data's)
        self.config = config
        self.run_dir = Path(config.run_dir)
        self.stages = StageRunner(self.run_dir, config)
        self.methods = [parse_method(name) for name in config.methods]
        self._annotator_stages: dict[int, StageResult] = {}
        self._pretrained: StageResult | None = None
        self._annotate_stages: dict[int, StageResult] = {}
        self._annotate_test_stages: dict[int, StageResult] = {}
        self._materialised: dict[str, StageResult] = {}
        self._trainers: dict[str, dict[str, Any]] = {}
        # progress bars inside long stages (training, annotation, generation): on a terminal, or when asked for
        self.bars = config.verbose or sys.stderr.isatty()

    # Trainer settings, the resolved precision included, read from the config at each use (so the stage that uses
    # them is seen reading trainer, precision, its own trainer block and its backbone).
    def stage_trainer(self, stage: str | None, backbone: Any) -> dict[str, Any]:
        """The shared ``trainer`` with ``stage``'s own trainer block over it (``None``: the shared one alone, for
        generation and log-probs), and the precision for ``backbone``."""
        from cwpo.io import stable_hash

        config = self.config
        settings = {**plain_data(config.trainer), **(plain_data(getattr(config, stage).trainer) if stage else {})}
        memo = stable_hash([settings, config.precision, plain_data(backbone)])
        if memo not in self._trainers:
            self._trainers[memo] = _with_precision(unwrap(config), settings, backbone)
        return dict(self._trainers[memo])

    @property
    def strong_backbone(self) -> Any:
        return self.config.sft.model.backbone

    @property
    def ws_backbone(self) -> Any:
        """WS-DPO's weak causal LM: the annotator's backbone unless ``ws_sft.model.backbone`` names another model."""
        ws = self.config.ws_sft.model.backbone
        return self.config.annotator.model.backbone if ws is None else ws

    # -- data -----------------------------------------------------------------------------------------------
    def _datamodule(self, cls_name: str, dataset: Any, tokenizer: Any, part: str, seed: int,
                    stage_data: Any = None, **kw):  # fmt: skip
        """A datamodule with the shared ``data`` settings, a stage's ``data`` block and ``kw`` (what the stage sets)."""
        from cwpo.data import datamodules

        data = self.config.data
        return getattr(datamodules, cls_name)(
            dataset=dataset,
            tokenizer=tokenizer,
            part=part,
            **({"split_ratio": data.split_ratio} if part in ("d_l", "d_u") else {}),  # only these parts are split
            split_seed=seed,
            max_length=data.max_length,
            chat_template_for_text=data.chat_template_for_text,
            truncation=data.truncation,
            seed=seed,
            **({} if stage_data is None else plain_data(stage_data)),
            **kw,
        )

    def _labels(self, source: str, seed: int, weak: StageResult | None, ws: StageResult | None):
        """``(dataset value, part, key)`` of the labels a label source trains on."""
        dataset = self.config.data.dataset
        if source == "human":
            return dataset, "d_u", {"human": "d_u"}
        if source == "human_all":
            return dataset, "train", {"human": "train"}
        stage = weak if source == "weak" else ws
        assert stage is not None
        return str(stage.path / "d_u_labelled.jsonl"), "all", {source: stage.key}

    # -- stage 1 and 2: the weak annotator ------------------------------------------------------------------
    def annotator(self, seed: int) -> StageResult:
        stage = self.config.annotator
        inputs = {"seed": seed}

        def fit(folder: Path) -> dict[str, Any]:
            import lightning as L

            from cwpo.annotation.loading import export_annotator
            from cwpo.modules.annotator import AnnotatorModule

            L.seed_everything(seed, workers=True, verbose=False)
            arguments = block_arguments(stage.model)
            spec = _spec(arguments.pop("backbone"), seed)
            module = AnnotatorModule(spec, **arguments)
            data = self._datamodule("PairDataModule", self.config.data.dataset, spec, "d_l", seed, stage.data,
                                    val_part="holdout")  # fmt: skip
            settings = self.stage_trainer("annotator", stage.model.backbone)
            trainer = _trainer(folder, settings, validate=True, **self._outputs(folder, "annotator", "weak", seed))
            start = time.perf_counter()
            trainer.fit(module, data)
            seconds = time.perf_counter() - start
            export_annotator(module, folder / "annotator")
            return {"val_accuracy": _metric(trainer, "val/accuracy"),
                    "seconds_per_epoch": seconds / max(settings["max_epochs"], 1)}  # fmt: skip

        return self.stages.run("annotator", inputs, fit, reads=ANNOTATOR_READS)

    def annotate(self, seed: int, annotator: StageResult, part: str = "d_u") -> StageResult:
        """The annotator's labels and confidences on ``part``: D_U (what weak-label methods train on), or the test
        part (``annotate_test``: its held-out agreement with human labels, never trained on)."""
        inputs = {"seed": seed, "annotator": annotator.key}
        name = "annotate" if part == "d_u" else f"annotate_{part}"
        output = f"{part}_labelled.jsonl"

        def label(folder: Path) -> dict[str, Any]:
            from cwpo.annotation.annotate import annotate_dataset

            precision = self.stage_trainer("annotator", self.config.annotator.model.backbone)["precision"]
            result = annotate_dataset(
                str(annotator.path / "annotator"),
                self.config.data.dataset,
                folder / output,
                part=part,
                split_ratio=self.config.data.split_ratio,
                split_seed=seed,
                max_length=self.config.data.max_length,
                truncation=self.config.data.truncation,
                chat_template_for_text=self.config.data.chat_template_for_text,
                report_dir=folder,
                progress=self.bars,
                trainer={"precision": precision},
                **block_arguments(self.config.annotate),
            )
            return {"n_pairs": result.n_pairs, "agreement": result.agreement,
                    "pairs_per_second": result.pairs_per_second}  # fmt: skip

        # A kill mid-stage keeps the scores done so far: annotate resumes from its parts (their manifest is checked).
        return self.stages.run(name, inputs, label, keep=(f"{output}.parts",), reads=ANNOTATE_READS)

    # -- WS-DPO: the weak model as a DPO policy, labelling by its implicit reward ---------------------------
    def ws_labels(self, seed: int) -> StageResult:
        backbone = self.ws_backbone
        sft = self._sft_stage("ws_sft", {"seed": seed}, WS_SFT_READS, backbone, self._start_spec(backbone, seed),
                              self.config.data.dataset, "d_l", seed)  # fmt: skip
        policy_inputs = {"seed": seed, "sft": sft.key}

        def train_policy(folder: Path) -> dict[str, Any]:
            weak = self.ws_backbone  # read here too: the stage's precision is resolved for it
            self._fit_policy("ws_policy", folder, self._sft_model(sft, weak, seed), MethodSpec("ws", "human"),
                             self.config.data.dataset, "d_l", seed, weak)  # fmt: skip
            return {}

        policy = self.stages.run("ws_policy", policy_inputs, train_policy, reads=WS_POLICY_READS)
        with self.stages.outside():  # the card: read by no stage
            self._card(policy.path / "model", title=f"WS-DPO weak policy (seed {seed}): DPO on D_L, labels D_U by "
                       "its implicit reward")  # fmt: skip

        def label(folder: Path) -> dict[str, Any]:
            from cwpo.pipeline.implicit import label_by_implicit_reward

            reference = self._sft_model(sft, backbone, seed)
            d_u = self._datamodule("PairDataModule", self.config.data.dataset, reference[0], "d_u", seed,
                                   batch_size=64, group_by_length=False)  # fmt: skip
            return label_by_implicit_reward(reference, policy.path / "model", d_u, folder,
                                            beta=self.config.ws_policy.model.beta,
                                            confidence=self.config.annotate.confidence)  # fmt: skip

        return self.stages.run("ws_annotate", {**policy_inputs, "policy": policy.key}, label, reads=WS_ANNOTATE_READS)

    # -- stage 3: the strong model --------------------------------------------------------------------------
    def _sft_stage(self, name, inputs, reads, backbone, spec, dataset, part, seed) -> StageResult:
        """An SFT stage (``sft`` or ``ws_sft``) from its config section of that name; ``backbone``: the config value
        its precision is resolved for, ``spec``: the model it starts from."""

        def fit(folder: Path) -> dict[str, Any]:
            import lightning as L

            from cwpo.modules.sft import SFTModule

            stage = getattr(self.config, name)
            L.seed_everything(seed, workers=True, verbose=False)
            arguments = block_arguments(stage.model)
            arguments.pop("backbone")
            out = folder / ("adapter" if arguments["lora"] is not None else "model")
            # with LoRA, the merged SFT model too: the base that a PO adapter stacked on this one names
            arguments["export_merged"] = arguments["export_merged"] and arguments["lora"] is not None
            module = SFTModule(spec, export_dir=str(out), **arguments)
            data = self._datamodule("SFTDataModule", dataset, spec, part, seed, stage.data)
            labels = next(iter((inputs.get("labels") or {"weak": None}).items()))  # ws_sft: the weak model
            source = "human_all" if labels == ("human", "train") else labels[0]
            trainer = _trainer(folder, self.stage_trainer(name, backbone), **self._outputs(folder, name, source, seed))
            trainer.fit(module, data)
            return {"train_loss": _metric(trainer, "train/loss")}

        return self.stages.run(name, inputs, fit, reads=reads)

    def _sft_model(self, sft: StageResult, backbone: Any, seed: int) -> tuple[ModelSpec, str | None]:
        """``(spec, init_adapter)`` of an SFT stage's model: a saved full model, or base + SFT adapter; ``backbone``:
        the config value it was trained from (the strong model's starts from its pretraining, when it has one)."""
        if (sft.path / "model").exists():
            # The seed still matters for a saved model: it seeds the PO LoRA adapter's init (build_causal_lm).
            return ModelSpec(str(sft.path / "model"), seed=seed), None
        base = self._strong_start(seed) if backbone is self.strong_backbone else self._start_spec(backbone, seed)
        return base, str(sft.path / "adapter")

    def pretrain(self) -> StageResult | None:
        """The strong model's pretraining stage (one for every seed), or ``None`` when it has none: causal-LM
        training from random weights on unlabelled synthetic text (:class:`cwpo.pipeline.config.PretrainStage`)."""
        data = self.config.data
        spec = as_model_spec(plain_data(self.strong_backbone))
        if self.config.pretrain is None or not spec.from_scratch:
            return None
        dataset = plain_data(data.dataset)
        name = dataset if isinstance(dataset, str) else dataset.get("name") if isinstance(dataset, dict) else None
        if name != "synthetic":
            raise ConfigError(
                f"pretrain needs the synthetic dataset (its generator writes the unlabelled text), got "
                f"{dataset!r}; set pretrain: null"
            )
        data_seed = int((dataset.get("args") or {}).get("seed", 0)) if isinstance(dataset, dict) else 0
        inputs = {"data_seed": data_seed}

        def fit(folder: Path) -> dict[str, Any]:
            import lightning as L
            from datasets import Dataset

            from cwpo.data.files import save_pairs
            from cwpo.data.synthetic import pretraining_records
            from cwpo.modules.sft import SFTModule

            stage = self.config.pretrain
            texts = stage.texts
            corpus = save_pairs(Dataset.from_list(pretraining_records(texts, data_seed)), folder / "corpus.jsonl")
            L.seed_everything(spec.seed, workers=True, verbose=False)
            module = SFTModule(spec, lora=None, export_dir=str(folder / "model"), **block_arguments(stage.model))
            loader = self._datamodule("SFTDataModule", str(corpus), spec, "all", spec.seed, stage.data)
            trainer = _trainer(folder, self.stage_trainer("pretrain", self.strong_backbone),
                               **self._outputs(folder, "pretrain", "strong", "_all"))  # fmt: skip
            trainer.fit(module, loader)
            return {"train_loss": _metric(trainer, "train/loss"), "texts": texts}

        return self.stages.run("pretrain", inputs, fit, reads=PRETRAIN_READS)

    def _strong_start(self, seed: int) -> ModelSpec:
        """The strong model SFT starts from: the pretrained model when there is a pretraining stage."""
        if self._pretrained is not None:
            return ModelSpec(str(self._pretrained.path / "model"), seed=_spec(self.strong_backbone, seed).seed)
        return self._start_spec(self.strong_backbone, seed)

    def _start_spec(self, backbone: Any, seed: int) -> ModelSpec:
        """``_spec(backbone, seed)``, but a GGUF checkpoint is dequantised once (stage ``dequantize``: float weights
        and tokenizer saved as a plain model folder, with any ``config`` override such as fewer layers applied), so
        every later stage loads it in a second instead of dequantising it again (about 12 s for SmolLM2-135M)."""
        spec = _spec(backbone, seed)
        packaged = spec.name_or_path.startswith("package:") and packaged_model_path(
            spec.name_or_path.removeprefix("package:")).is_file()  # fmt: skip
        if spec.from_scratch or not (spec.gguf_file or packaged):
            return spec
        identity = {k: v for k, v in spec.identity().items() if k != "seed"}
        key = json.dumps(identity, sort_keys=True)
        stage = self._materialised.get(key)
        if stage is None:

            def save(folder: Path) -> dict[str, Any]:
                from cwpo.models import save_dequantised

                save_dequantised(spec, folder / "model")
                return {}

            stage = self.stages.run("dequantize", identity, save, reads=DEQUANTIZE_READS)
            if not self.stages.dry:  # a planning pass runs nothing: the run itself must still dequantise
                self._materialised[key] = stage
        return ModelSpec(str(stage.path / "model"), dtype=spec.dtype, seed=spec.seed)

    def sft(self, seed: int, source: str, labels) -> StageResult:
        dataset, part, label_key = labels
        inputs = {"seed": seed, "labels": label_key,
                  "pretrain": None if self._pretrained is None else self._pretrained.key}  # fmt: skip
        reads = SFT_READS + (_SPLIT if part in ("d_l", "d_u") else ())
        return self._sft_stage("sft", inputs, reads, self.strong_backbone, self._strong_start(seed), dataset, part,
                               seed)  # fmt: skip

    def _policy_arguments(self, name: str, folder: Path, method: MethodSpec, module: type) -> dict[str, Any]:
        """``name``'s (``policy`` or ``ws_policy``) model block as ``module``'s arguments, with what the method and
        the stage set: objective, weighting, export folder; a reference the run can take."""
        accepted = set(inspect.signature(module.__init__).parameters)
        model = getattr(self.config, name).model
        arguments = {f.name: getattr(model, f.name) for f in dataclasses.fields(unwrap(model)) if f.name in accepted}
        if method.online and arguments["reference"] == "precomputed":
            arguments["reference"] = "adapter_disabled"  # on-policy pairs are new at every step: nothing to precompute
        if arguments["lora"] is None and arguments["reference"] == "adapter_disabled":
            arguments["reference"] = "separate"  # a full fine-tune has no adapter to switch off
        arguments["export_merged"] = arguments["export_merged"] and arguments["lora"] is not None  # LoRA's alone
        return {
            **arguments,
            "objective": method.objective,
            "weighting": method.weighting,
            "export_dir": str(folder / ("adapter" if arguments["lora"] is not None else "model")),
        }

    def _fit_policy(self, name, folder, model, method, dataset, part, seed, backbone):
        """A preference-optimisation stage (``policy`` or ``ws_policy``) from its config section of that name."""
        import lightning as L

        from cwpo.modules.policy import PolicyModule

        L.seed_everything(seed, workers=True, verbose=False)
        spec, init_adapter = model
        arguments = self._policy_arguments(name, folder, method, PolicyModule)
        module = PolicyModule(spec, init_adapter=init_adapter, top_n_fraction=method.top_n_fraction,
                              reference_cache_dir=str(folder / "reference_cache"), **arguments)  # fmt: skip
        data = self._datamodule("PairDataModule", dataset, spec, part, seed, getattr(self.config, name).data,
                                prefix_sharing=arguments["prefix_sharing"])  # fmt: skip
        stage, method_name = ("ws_policy", "weak") if name == "ws_policy" else ("po", method.name)
        trainer = _trainer(folder, self.stage_trainer(name, backbone),
                           **self._outputs(folder, stage, method_name, seed))  # fmt: skip
        trainer.fit(module, data)
        return trainer

    def po(self, seed: int, method: MethodSpec, sft: StageResult, labels) -> StageResult:
        dataset, part, label_key = labels
        inputs = {"seed": seed, "sft": sft.key, "labels": label_key, "method": plain_data(method) | {"name": None}}
        if method.online:
            return self._online_po(seed, method, sft, inputs)

        def fit(folder: Path) -> dict[str, Any]:
            labels_path = dataset
            if method.weighting == "confidence" and method.scheme != self.config.annotate.confidence:
                labels_path = str(_rescheme(Path(dataset), folder / "labels.jsonl", method.scheme))
            backbone = self.strong_backbone
            trainer = self._fit_policy("policy", folder, self._sft_model(sft, backbone, seed), method, labels_path,
                                       part, seed, backbone)  # fmt: skip
            return {
                "train_loss": _metric(trainer, "train/loss"),
                "reward_accuracy": _metric(trainer, "rewards/accuracies"),
            }

        reads = PO_READS + (_SPLIT if part in ("d_l", "d_u") else ())
        if method.weighting == "confidence":
            reads += ("annotate.confidence",)  # a scheme other than the annotation's re-weights the labels
        return self.stages.run("po", inputs, fit, reads=reads, method=method.name)

    def _online_po(self, seed: int, method: MethodSpec, sft: StageResult, inputs: dict[str, Any]) -> StageResult:
        """Online CW-DPO (appendix J.5): the SFT policy samples pairs for D_U's prompts, the annotator labels them."""
        data = self.config.data
        annotator = self._annotator_stages[seed]
        judge = self.config.eval.judge
        monitor = dict(judge) if judge.get("kind") == "synthetic_gold" else None  # cheap enough to run every step
        inputs = {**inputs, "annotator": annotator.key}

        def fit(folder: Path) -> dict[str, Any]:
            import lightning as L

            from cwpo.modules.online import OnlinePolicyModule

            L.seed_everything(seed, workers=True, verbose=False)
            backbone = self.strong_backbone
            spec, init_adapter = self._sft_model(sft, backbone, seed)
            module = OnlinePolicyModule(
                spec,
                str(annotator.path / "annotator"),
                init_adapter=init_adapter,
                confidence=method.scheme,
                sample_seed=seed,
                annotator_max_length=data.max_length,
                chat_template_for_text=data.chat_template_for_text,
                monitor_judge=monitor,
                **block_arguments(self.config.online.model),
                **self._policy_arguments("policy", folder, method, OnlinePolicyModule),
            )
            prompts = self._datamodule("PromptDataModule", data.dataset, spec, "d_u", seed, self.config.online.data)
            trainer = _trainer(folder, self.stage_trainer("policy", backbone),
                               **self._outputs(folder, "po", method.name, seed))  # fmt: skip
            trainer.fit(module, prompts)
            return {"train_loss": _metric(trainer, "train/loss"), "reward_accuracy": _metric(trainer, "rewards/accuracies"),
                    "gold_agreement_last_epoch": _metric(trainer, "online/gold_agreement_epoch"),
                    "identical_last_epoch": _metric(trainer, "online/identical_epoch"),
                    "response_tokens_last_epoch": _metric(trainer, "online/response_tokens_epoch")}  # fmt: skip

        reads = ONLINE_PO_READS + _SPLIT  # D_U's prompts
        return self.stages.run("po", inputs, fit, reads=reads, method=method.name)

    # -- evaluation -----------------------------------------------------------------------------------------
    def _test_prompts(self) -> list[Any]:
        from cwpo.data import load_part

        test = load_part(self.config.data.dataset, "test")
        n = self.config.data.test_prompts
        prompts = test["prompt"]
        return list(prompts if n is None else prompts[:n])

    def generate(self, seed: int, model_stage: StageResult, model: tuple[ModelSpec, str | None], adapter: str | None):
        ev = self.config.eval
        inputs = {"model": model_stage.key, "seed": seed}

        def run(folder: Path) -> dict[str, Any]:
            from cwpo.evaluation.generate import GenerationConfig, default_trainer, generate
            from cwpo.models import load_tokenizer
            from cwpo.modules.causal_lm import build_causal_lm, merge_adapter

            spec, init_adapter = model
            lm = build_causal_lm(spec, init_adapter=init_adapter, trainable=False)
            if adapter is not None:
                lm = merge_adapter(lm, adapter)
            config = GenerationConfig(max_new_tokens=ev.max_new_tokens, temperature=ev.temperature, top_p=ev.top_p,
                                      seed=seed, batch_size=ev.batch_size, progress=self.bars,
                                      max_prompt_length=ev.max_prompt_length,
                                      chat_template_for_text=self.config.data.chat_template_for_text,
                                      stop_strings=tuple(ev.stop_strings), backend=ev.backend)  # fmt: skip
            tokenizer = load_tokenizer(spec)
            if ev.backend == "vllm":  # vLLM loads weights itself: the merged model, saved in the stage folder
                from cwpo.io import atomic_path

                with atomic_path(folder / "merged", is_dir=True) as tmp:
                    lm.save_pretrained(str(tmp))
                    tokenizer.save_pretrained(str(tmp))
                lm = str(folder / "merged")
            trainer = default_trainer(**self.stage_trainer(None, self.strong_backbone))
            records = generate(lm, tokenizer, self._test_prompts(), config, trainer=trainer,
                               output_path=folder / "generations.jsonl")  # fmt: skip
            return {
                "n": len(records),
                "mean_new_tokens": sum(r["n_new_tokens"] for r in records) / max(len(records), 1),
            }

        return self.stages.run("generate", inputs, run, reads=GENERATE_READS)

    def _judge(self):
        """The configured judge, or ``None`` when ``eval.judge`` is ``None`` (no GRA then)."""
        if not hasattr(self, "_judge_cache"):
            from cwpo.evaluation.judges import load_judge

            judge = None if self.config.eval.judge is None else dict(self.config.eval.judge)
            self._judge_cache = (
                None if judge is None else load_judge(judge.pop("kind"), judge.pop("spec", None), **judge)
            )
        return self._judge_cache

    def gra(self, aligned: StageResult, sft: StageResult) -> dict[str, Any]:
        """Aligned vs SFT answers to the same test prompts: GRA, wins / ties / losses, mean gold reward ± SE,
        mean length and EOS rate of both, and the per-prompt values (``per_prompt``) for paired comparisons."""
        from cwpo.evaluation.judges import judge_compare
        from cwpo.evaluation.metrics import mean_se, pairwise_accuracy

        def read(stage: StageResult) -> list[dict[str, Any]]:
            lines = (stage.path / "generations.jsonl").read_text().splitlines()
            return sorted((json.loads(line) for line in lines if line), key=lambda r: r["index"])

        aligned_rows, sft_rows = read(aligned), read(sft)
        prompts = [row["prompt"] for row in aligned_rows]
        answers, sft_answers = [r["response"] for r in aligned_rows], [r["response"] for r in sft_rows]
        judge = self._judge()
        if judge is None:  # no judge: only lengths and EOS rates
            return self._length_stats(aligned_rows, sft_rows)
        margins = judge_compare(judge, prompts, answers, sft_answers).double()
        result = pairwise_accuracy(margins)
        out = {"gra": result.gra, "ties_pct": result.ties, "gra_se": result.se, "n": result.n, "wins": result.n_wins,
               "ties": result.n_ties, "losses": result.n_losses}  # fmt: skip
        per_prompt: dict[str, list[float]] = {"outcome": torch.sign(margins).tolist()}
        if hasattr(judge, "score"):
            rewards = judge.score(prompts, answers).double()
            sft_rewards = judge.score(prompts, sft_answers).double()
            out["mean_gold_reward"], out["gold_reward_se"] = mean_se(rewards.tolist())
            out["sft_mean_gold_reward"], out["sft_gold_reward_se"] = mean_se(sft_rewards.tolist())
            out["gold_gain"], out["gold_gain_se"] = mean_se((rewards - sft_rewards).tolist())
            per_prompt |= {"reward": rewards.tolist(), "sft_reward": sft_rewards.tolist()}
        out |= self._length_stats(aligned_rows, sft_rows)
        out["per_prompt"] = per_prompt
        return out

    def _length_stats(self, aligned_rows: list[dict[str, Any]], sft_rows: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        limit = self.config.eval.max_new_tokens
        for prefix, rows in (("", aligned_rows), ("sft_", sft_rows)):
            tokens = [r["n_new_tokens"] for r in rows]
            # an answer ended if EOS came before the token limit (conservative: EOS as the very last token counts
            # as not ended)
            out[f"{prefix}mean_length"] = sum(tokens) / max(len(tokens), 1)
            out[f"{prefix}eos_rate"] = sum(t < limit for t in tokens) / max(len(tokens), 1)
        return out

    def _test_logps(self, seed: int, key: Any, model: tuple[ModelSpec, str | None], adapter: str | None = None):
        """Stage ``test_logps``: ``(n, 4)`` summed response log-probs and token counts of the test pairs'
        (chosen, rejected) under one model (``key`` names it), computed once and read by every comparison."""
        inputs = {"model": key, "seed": seed}

        def run(folder: Path) -> dict[str, Any]:
            from cwpo.modules.causal_lm import build_causal_lm, merge_adapter
            from cwpo.pipeline.implicit import logps_table

            lm = build_causal_lm(model[0], init_adapter=model[1], trainable=False)
            if adapter is not None:
                lm = merge_adapter(lm, adapter)
            test = self._datamodule("PairDataModule", self.config.data.dataset, model[0], "test", seed,
                                    batch_size=64, group_by_length=False)  # fmt: skip
            test.setup("fit")
            bf16 = str(self.stage_trainer(None, self.strong_backbone).get("precision", "")).startswith("bf16")
            table = logps_table(lm, test, impl=self.config.policy.model.logps_impl, bf16=bf16, batch_size=16)
            from cwpo.io import atomic_path

            with atomic_path(folder / "logps.pt") as tmp:
                torch.save({"table": table, "ids": list(test.train_dataset["id"])}, tmp)
            return {"pairs": int(table.shape[0])}

        stage = self.stages.run("test_logps", inputs, run, reads=TEST_LOGPS_READS)
        return (None if self.stages.dry else torch.load(stage.path / "logps.pt", weights_only=True)), stage

    def _test_gold_margins(self) -> dict[str, float] | None:
        """Gold reward margins (chosen − rejected) of the test pairs by pair id, ``None`` when the data has none."""
        if not hasattr(self, "_gold_margins"):
            from cwpo.data import load_part
            from cwpo.data.report import quiet_reports

            with quiet_reports():  # the generation stage reports the test part's counts
                test = load_part(self.config.data.dataset, "test")
            self._gold_margins = None
            if "gold_reward_chosen" in test.column_names:
                gold = dict(zip(test["id"], (a - b for a, b in zip(test["gold_reward_chosen"],
                                                                   test["gold_reward_rejected"], strict=True)),
                                strict=True))  # fmt: skip
                self._gold_margins = gold
        return self._gold_margins

    @property
    def has_gold(self) -> bool:
        """Whether the test pairs carry gold rewards (the synthetic task); otherwise only human labels judge."""
        return self._test_gold_margins() is not None

    def _accuracy(self, margin: torch.Tensor, ids: list[str]) -> tuple[dict[str, Any], list[float]]:
        """Held-out accuracy of implicit-reward margins (chosen − rejected, loaded pairs in human order): vs the
        human labels with its binomial SE, vs gold when there is gold; and the per-pair human outcomes (0/1)."""
        from cwpo.evaluation.metrics import mean_se

        human = (margin > 0).double()  # ties count as wrong
        accuracy, se = mean_se((100.0 * human).tolist())
        out = {"heldout_human_accuracy": accuracy, "heldout_human_se": se, "heldout_pairs": int(margin.shape[0])}
        gold = self._test_gold_margins()
        if gold is not None:
            g = torch.tensor([gold[i] for i in ids], dtype=torch.float64)
            correct = ((margin > 0) & (g > 0)) | ((margin < 0) & (g < 0))
            out["heldout_gold_accuracy"] = 100.0 * float(correct.double().mean())
        return out, human.tolist()

    def heldout(self, seed: int, po: StageResult, sft: StageResult, model, adapter: str | None,
                reference_model=None, reference_adapter: str | None = None) -> StageResult:  # fmt: skip
        """Held-out preference accuracy: on the test pairs, does the policy's implicit reward
        ``log π(y|x) − log π_SFT(y|x)`` (β > 0 does not change its sign) order the two responses as the human did,
        and as the gold reward does when there is one? (Ties count as wrong.) Per-pair human outcomes are in
        ``heldout.json`` for paired comparisons. ``reference_model`` / ``reference_adapter``: the reference, when
        it is not ``sft``'s model (cwpo evaluate)."""
        reference = reference_model or self._sft_model(sft, self.strong_backbone, seed)
        ref, ref_stage = self._test_logps(seed, sft.key, reference, reference_adapter)
        policy, policy_stage = self._test_logps(seed, po.key, model, adapter)
        inputs = {"po": po.key, "sft": sft.key, "seed": seed, "logps": [ref_stage.key, policy_stage.key]}

        def run(folder: Path) -> dict[str, Any]:
            h = (policy["table"][:, :2] - ref["table"][:, :2]).double()
            summary, outcomes = self._accuracy(h[:, 0] - h[:, 1], policy["ids"])
            write_json(folder / "heldout.json", {"ids": policy["ids"], "human_correct": outcomes})
            return summary

        return self.stages.run("heldout", inputs, run, reads=HELDOUT_READS)

    def sft_heldout(self, seed: int, source: str, sft: StageResult) -> dict[str, Any]:
        """Held-out preference accuracy of an SFT model, which has no DPO reference of its own: its implicit reward
        against the model it started from, ``log π_SFT(y|x) − log π_base(y|x)`` (the SFT adapter's log-ratio), and,
        beside it, the plain length-normalised log-likelihood ``log π_SFT(y|x) / |y|`` (no reference)."""
        backbone = self.strong_backbone
        base, base_stage = self._test_logps(seed, {"base": plain_data(backbone),
                                                   "pretrain": None if self._pretrained is None
                                                   else self._pretrained.key}, (self._strong_start(seed), None))  # fmt: skip
        model, _ = self._test_logps(seed, sft.key, self._sft_model(sft, backbone, seed))
        if self.stages.dry:  # planning: the stages only
            return {}
        ratio = (model["table"][:, :2] - base["table"][:, :2]).double()
        out, outcomes = self._accuracy(ratio[:, 0] - ratio[:, 1], model["ids"])
        table = model["table"].double()
        normalised = table[:, 0] / table[:, 2].clamp(min=1) - table[:, 1] / table[:, 3].clamp(min=1)
        length_norm, _ = self._accuracy(normalised, model["ids"])
        base_table = base["table"].double()
        base_norm, _ = self._accuracy(base_table[:, 0] / base_table[:, 2].clamp(min=1)
                                      - base_table[:, 1] / base_table[:, 3].clamp(min=1), base["ids"])  # fmt: skip
        return {"method": f"sft ({source} labels)", "seed": seed, **out,
                "length_normalised_accuracy": length_norm["heldout_human_accuracy"],
                "length_normalised_se": length_norm["heldout_human_se"],
                "base_length_normalised_accuracy": base_norm["heldout_human_accuracy"],
                "per_pair": outcomes}  # fmt: skip

    def label_stats(self, method: MethodSpec, labels) -> dict[str, Any]:
        """How the pairs a method trains on agree with the gold order and with the human labels, each pair counted
        by the weight the method gives it (its confidence for CW-PO, 0 or 1 for top-N, else 1), and the effective
        sample size of those weights (``(Σw)² / Σw²``, in pairs)."""
        from cwpo.data import load_part
        from cwpo.data.files import iter_rows

        dataset, part, _ = labels
        data = self.config.data
        if isinstance(dataset, str) and Path(dataset).exists():
            records = [row for _, row in iter_rows(dataset)]
        else:
            records = list(load_part(dataset, part, split_ratio=data.split_ratio, split_seed=int(self._seed)))
        if not records or "gold_reward_chosen" not in records[0]:
            return {}
        from cwpo.modules.policy import WEIGHTINGS

        # The weights training gives these pairs: the policy module's own weighting functions.
        confidence = torch.tensor([float(r.get("confidence", 1.0)) for r in records], dtype=torch.float64)
        weights = WEIGHTINGS[method.weighting].fn(confidence, method.top_n_fraction).double().tolist()
        total = sum(weights) or 1.0
        gold = [float(r["gold_reward_chosen"] > r["gold_reward_rejected"]) for r in records]
        human = [float(r.get("human_label", 1) == 1) for r in records]
        return {
            "label_gold_agreement": sum(w * g for w, g in zip(weights, gold, strict=True)) / total,
            "label_human_agreement": sum(w * h for w, h in zip(weights, human, strict=True)) / total,
            "label_pairs": len(records),
            "label_ess": total**2 / max(sum(w * w for w in weights), 1e-12),
        }

    def annotated_files(self) -> list[Path]:
        """The weak annotator's labelled D_U of this config's seeds (those computed or cached so far)."""
        return [self._annotate_stages[s].path / "d_u_labelled.jsonl" for s in self.config.seeds
                if s in self._annotate_stages]  # fmt: skip

    def _outputs(self, folder: Path, stage: str, method: str, seed: int | str) -> dict[str, Any]:
        """A training stage's logger and progress-bar label (a bar only on a terminal or with ``verbose``)."""
        return {"logger": self._logger(folder, stage, method, seed),
                "progress": f"{stage}/{method}/seed{seed}" if self.bars else None}  # fmt: skip

    def _logger(self, folder: Path, stage: str, method: str, seed: int | str):
        """Stage ``stage``'s own logger (:func:`cwpo.pipeline.console.stage_logger`)."""
        return stage_logger(self.config.logger, folder, self.run_dir, stage, method, seed)

    def _card(self, folder: Path, *, row: dict[str, Any] | None = None, title: str | None = None) -> None:
        """Rewrite an exported model's card with its method's title, training data and eval numbers (a stage
        cached by an older cwpo, with no ``cwpo_card.json``, keeps its card)."""
        from cwpo.modules.export import CARD_FILE, dataset_card_entry, update_card

        if not (folder / CARD_FILE).is_file():
            return
        dataset = dataset_card_entry(self.config.data.dataset)
        evals = {key: value for key, value in (row or {}).items() if key in CARD_METRICS and value is not None}
        test = {**dataset, "name": f"{dataset['name']} test ({self.config.data.test_prompts or 'all'} prompts)"}
        update_card(folder, **({"title": title} if title else {}), datasets=[dataset], eval=evals, eval_dataset=test)

    # -- everything -----------------------------------------------------------------------------------------
    def stage_times(self) -> list[dict[str, Any]]:
        """Every stage this run computed or reused, in order, with the wall seconds it took when computed (read
        from its ``DONE.json``); also written to ``<run_dir>/stage_times.json``."""
        times = []
        labels = dict.fromkeys(self.stages.computed, True)  # a stage read again after computing it stays computed
        for label in self.stages.reused:
            labels.setdefault(label, False)
        for label, computed in labels.items():
            marker = self.run_dir / label / "DONE.json"
            seconds = json.loads(marker.read_text()).get("seconds") if marker.exists() else None
            name, key = label.split("/", 1)
            times.append({"stage": name, "key": key, "seconds": seconds, "computed": computed,
                          "mtime": marker.stat().st_mtime if marker.exists() else 0.0})  # fmt: skip
        times.sort(key=lambda t: t.pop("mtime"))
        write_json(self.run_dir / "stage_times.json", times)
        return times

    def report_sections(self, out: Path, rows: list[dict[str, Any]]) -> list[str]:
        """Extra report sections: without a gold model, held-out accuracy vs the human labels (aligned and SFT
        models), its paired comparisons, the annotator on the test pairs and the generations side by side; and,
        always, the wall time of every stage."""
        from cwpo.evaluation.heldout_report import no_gold_sections, stage_times_table

        lines: list[str] = []
        if not self.has_gold:
            test = [json.loads(line) for s in self._annotate_test_stages.values()
                    for line in (s.path / "test_labelled.jsonl").read_text().splitlines() if line]  # fmt: skip
            out.mkdir(parents=True, exist_ok=True)
            lines += no_gold_sections(rows, getattr(self, "sft_rows", []), out, annotated_test=test or None,
                                      generation_files=getattr(self, "generation_files", {}),
                                      show_generations=self.config.eval.show_generations)  # fmt: skip
        elif self.config.eval.show_generations:
            from cwpo.evaluation.heldout_report import generations_section

            lines += [
                "## Generations",
                "",
                *generations_section(self.generation_files, self.config.eval.show_generations),
            ]
        lines += ["", "## Wall time per stage", "", *stage_times_table(self.stage_times())]
        return lines

    def plan(self) -> list[dict[str, Any]]:
        """Every stage :meth:`run` will run, with its key and whether it is done, computed without running any
        (a dry pass of :meth:`run`); ``index.json`` is written from it."""
        with self.stages.planning():
            self.run()
        return [{"stage": n.name, "key": k, "seed": n.seed, "methods": self.stages.methods_of(k), "done": n.done}
                for k, n in self.stages.graph.items()]  # fmt: skip

    def run(self) -> list[dict[str, Any]]:
        if not self.stages.dry:
            from cwpo.pipeline.config import validate

            validate(unwrap(self.config))  # every problem of the config at once, before any work
            self.plan()  # the [k/N] count, the ETA and index.json
        if self.config.torch_threads is not None and not self.stages.dry:
            torch.set_num_threads(self.config.torch_threads)
        rows = []
        sources = {m.labels for m in self.methods}
        self.sft_rows: list[dict[str, Any]] = []  # no gold: the SFT models' held-out accuracy
        self.generation_files: dict[str, Path] = {}  # first seed's generations, by method (and ``sft (<labels>)``)
        with self.stages.outside():  # whether the test pairs carry gold rewards: decides which stages run
            has_gold = self.has_gold
        with _quiet(self.config.verbose):
            self._pretrained = self.pretrain()
            for seed in self.config.seeds:
                self._seed = seed
                weak = ws = None
                annotator_summary: dict[str, Any] = {}
                if "weak" in sources:
                    annotator = self._annotator_stages[seed] = self.annotator(seed)
                    weak = self._annotate_stages[seed] = self.annotate(seed, annotator)
                    annotator_summary = {"annotator_val_accuracy": annotator.summary.get("val_accuracy"),
                                         "weak_label_agreement": weak.summary.get("agreement")}  # fmt: skip
                    with self.stages.outside():  # the card: read by no stage
                        self._card(annotator.path / "annotator", row=annotator_summary)
                    if not has_gold:  # no gold model: the annotator is judged on the held-out human labels
                        self._annotate_test_stages[seed] = self.annotate(seed, annotator, "test")
                if "ws" in sources:
                    ws = self.ws_labels(seed)
                sft_stages, sft_generations = {}, {}
                for source in sorted(sources):
                    labels = self._labels(source, seed, weak, ws)
                    sft = self.sft(seed, source, labels)
                    sft_stages[source] = sft
                    sft_generations[source] = self.generate(
                        seed, sft, self._sft_model(sft, self.strong_backbone, seed), None
                    )
                    self.generation_files.setdefault(
                        f"sft ({source})", sft_generations[source].path / "generations.jsonl"
                    )
                    if not has_gold:
                        heldout_row = self.sft_heldout(seed, source, sft)
                        if not self.stages.dry:
                            self.sft_rows.append(heldout_row)
                for method in self.methods:
                    labels = self._labels(method.labels, seed, weak, ws)
                    sft = sft_stages[method.labels]
                    po = self.po(seed, method, sft, labels)
                    adapter = str(po.path / "adapter") if (po.path / "adapter").exists() else None
                    model = self._sft_model(sft, self.strong_backbone, seed)
                    if adapter is None:
                        model = (ModelSpec(str(po.path / "model")), None)
                    generation = self.generate(seed, po, model, adapter)
                    heldout = self.heldout(seed, po, sft, model, adapter) if not method.online else None
                    if self.stages.dry:
                        continue
                    family, objective = method_family(method)
                    self.generation_files.setdefault(method.name, generation.path / "generations.jsonl")
                    with self.stages.outside():  # the report's rows and the model cards: read by no stage
                        rows.append({"method": method.name, "family": family, "objective": objective, "seed": seed,
                                     **self.gra(generation, sft_generations[method.labels]),
                                     **self.label_stats(method, labels), **(heldout.summary if heldout else {}),
                                     **annotator_summary})  # fmt: skip
                        if heldout is not None and not has_gold:  # per-pair outcomes for the paired comparisons
                            outcomes = json.loads((heldout.path / "heldout.json").read_text())["human_correct"]
                            rows[-1]["per_prompt"] = rows[-1].get("per_prompt", {}) | {
                                "heldout": [100.0 * v for v in outcomes]}  # fmt: skip
                        self._card(po.path / ("adapter" if adapter else "model"), row=rows[-1],
                                   title=f"{family} {objective} policy (cwpo method {method.name}, seed {seed})")  # fmt: skip
        finish_wandb()
        if self.stages.dry:
            return rows
        write_json(self.run_dir / "rows.json", [{k: v for k, v in r.items() if k != "per_prompt"} for r in rows])
        return rows


def method_family(method: MethodSpec) -> tuple[str, str]:
    """The row and column of a method in the Table-1-style report."""
    objective = OBJECTIVE_TITLES[method.objective]
    if method.labels == "human":
        return "Human", objective
    if method.labels == "human_all":
        return "Human (100 %)", objective
    if method.labels == "ws":
        return "WS-DPO", objective
    if method.online:
        family = "Online CW-PO" if method.weighting == "confidence" else "Online (c = 1)"
        return (family if method.scheme == "cw" else f"{family} ({method.scheme})"), objective
    if method.weighting == "confidence":
        return ("CW-PO" if method.scheme == "cw" else f"CW-PO ({method.scheme})"), objective
    if method.weighting == "top_n":
        return f"Top-{round(100 * method.top_n_fraction)} %", objective
    return "Weak (c = 1)", objective


def _rescheme(source: Path, target: Path, scheme: str) -> Path:
    """A copy of a labelled file with its confidence recomputed from the weak scores under another scheme."""
    from cwpo.data.files import iter_rows, save_pairs
    from cwpo.losses import confidence_from_margin

    records = [row for _, row in iter_rows(source)]
    margins = torch.tensor([r["weak_score_chosen"] - r["weak_score_rejected"] for r in records], dtype=torch.float64)
    for record, value in zip(records, confidence_from_margin(margins, scheme).tolist(), strict=True):
        record["confidence"] = float(value)
    from datasets import Dataset

    save_pairs(Dataset.from_list(records), target)
    return target
