"""Every stage of a CW-PO experiment, cached: annotator → annotate → SFT → PO → generate → judge, per seed.

Stage inputs are the config values that decide a stage's result plus the keys of the stages it reads, so a
rerun reuses every finished stage, an interrupted run resumes at the stage it stopped in, and changing one
method's settings reruns only that method's stages (see :mod:`cwpo.pipeline.stages`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from cwpo.errors import ConfigError
from cwpo.io import write_json
from cwpo.models import ModelSpec, as_model_spec, hidden_size, packaged_model_path
from cwpo.modules.optim import OptimConfig
from cwpo.pipeline.config import ExperimentConfig
from cwpo.pipeline.methods import MethodSpec, parse_method
from cwpo.pipeline.stages import StageResult, StageRunner
from cwpo.precision import resolve_precision

log = logging.getLogger(__name__)

OBJECTIVE_TITLES = {"dpo": "DPO", "ipo": "IPO", "rdpo": "rDPO"}


def _plain(value: Any) -> Any:
    """Config values as JSON-able data (dataclasses to dicts) for stage keys."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _spec(value: Any, seed: int) -> ModelSpec:
    """The model spec for one seed: its ``seed`` differs per seed, for every backbone, since it seeds both a random
    initialisation and the init of a LoRA adapter put on the model (pretrained weights load the same for any seed)."""
    spec = as_model_spec(value if not isinstance(value, dict) else dict(value))
    return dataclasses.replace(spec, seed=spec.seed + 1000 * seed)


def _trainer(folder: Path, epochs: int, extra: dict[str, Any], *, validate: bool = False):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    settings = {
        "max_epochs": epochs,
        "default_root_dir": str(folder),
        "logger": CSVLogger(str(folder), name="logs", version=0),
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


def _stage_trainer(config: ExperimentConfig, backbone: Any) -> dict[str, Any]:
    """``config.trainer`` with the Lightning precision that ``config.precision`` gives for ``backbone`` (an explicit
    ``trainer.precision`` wins)."""
    extra = _plain(config.trainer)
    if "precision" not in extra:
        # Only ``auto`` looks at the model's width (its config: a hub read for a hub model).
        spec = as_model_spec(backbone if not isinstance(backbone, dict) else dict(backbone))
        hidden = hidden_size(spec) if config.precision == "auto" else None
        extra["precision"] = resolve_precision(
            config.precision, hidden_size=hidden, accelerator=extra.get("accelerator")
        )
    return extra


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Lightning announces devices and tips at every Trainer; a pipeline of dozens of them should not."""
    import lightning.pytorch  # noqa: F401  importing lightning resets its loggers: set levels after the import

    names = ("lightning.pytorch", "lightning.fabric", "lightning")
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    from datasets.utils import logging as datasets_logging
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled(), datasets_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Loading weights" / "Writing model shards" at every stage
    datasets_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars[0]:
            hf_logging.enable_progress_bar()
        if bars[1]:
            datasets_logging.enable_progress_bar()
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _metric(trainer, name: str) -> float | None:
    value = trainer.callback_metrics.get(name)
    return None if value is None else float(value)


class Experiment:
    """Runs an :class:`ExperimentConfig`; :meth:`run` returns one result row per (method, seed)."""

    def __init__(self, config: ExperimentConfig):
        self.config = config
        self.run_dir = Path(config.run_dir)
        self.stages = StageRunner(self.run_dir)
        self.methods = [parse_method(name) for name in config.methods]
        self._annotator_stages: dict[int, StageResult] = {}
        self._pretrained: StageResult | None = None
        self._annotate_stages: dict[int, StageResult] = {}
        self._annotate_test_stages: dict[int, StageResult] = {}
        # Trainer settings of the weak and the strong model's stages, the resolved precision included (in stage keys).
        self.weak_trainer = _stage_trainer(config, config.weak.backbone)
        self.strong_trainer = _stage_trainer(config, config.strong.backbone)
        # WS-DPO's weak causal LM: the annotator's backbone unless ``weak.ws_backbone`` names another model.
        ws = config.weak.ws_backbone
        self.ws_trainer = self.weak_trainer if ws is None else _stage_trainer(config, ws)
        self._materialised: dict[str, StageResult] = {}

    # -- data -----------------------------------------------------------------------------------------------
    @property
    def _data_inputs(self) -> dict[str, Any]:
        data = self.config.data
        return {"dataset": _plain(data.dataset), "split_ratio": data.split_ratio, "max_length": data.max_length}

    def _datamodule(self, cls_name: str, dataset: Any, tokenizer: Any, part: str, seed: int, batch_size: int, **kw):
        from cwpo.data import datamodules

        data = self.config.data
        return getattr(datamodules, cls_name)(
            dataset=dataset,
            tokenizer=tokenizer,
            part=part,
            split_ratio=data.split_ratio,
            split_seed=seed,
            max_length=data.max_length,
            chat_template_for_text=data.chat_template_for_text,
            truncation=data.truncation,
            batch_size=batch_size,
            seed=seed,
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
        weak = self.config.weak
        inputs = {**self._data_inputs, "seed": seed, "backbone": _plain(weak.backbone), "epochs": weak.epochs,
                  "batch_size": weak.batch_size, "lr": weak.lr, "trainer": self.weak_trainer}  # fmt: skip

        def fit(folder: Path) -> dict[str, Any]:
            import lightning as L

            from cwpo.annotation.loading import export_annotator
            from cwpo.modules.annotator import AnnotatorModule

            L.seed_everything(seed, workers=True, verbose=False)
            spec = _spec(weak.backbone, seed)
            module = AnnotatorModule(spec, optim=OptimConfig(lr=weak.lr, optimizer="adam", scheduler="constant"))
            data = self._datamodule("PairDataModule", self.config.data.dataset, spec, "d_l", seed, weak.batch_size,
                                    val_part="holdout", val_fraction=0.1)  # fmt: skip
            trainer = _trainer(folder, weak.epochs, self.weak_trainer, validate=True)
            start = time.perf_counter()
            trainer.fit(module, data)
            seconds = time.perf_counter() - start
            export_annotator(module, folder / "annotator")
            return {"val_accuracy": _metric(trainer, "val/accuracy"), "seconds_per_epoch": seconds / weak.epochs}

        return self.stages.run("annotator", inputs, fit)

    def annotate(self, seed: int, annotator: StageResult, part: str = "d_u") -> StageResult:
        """The annotator's labels and confidences on ``part``: D_U (what weak-label methods train on), or the test
        part (``annotate_test``: its held-out agreement with human labels, never trained on)."""
        weak = self.config.weak
        inputs = {**self._data_inputs, "seed": seed, "annotator": annotator.key, "confidence": weak.confidence,
                  "precision": self.weak_trainer["precision"]}  # fmt: skip
        name = "annotate" if part == "d_u" else f"annotate_{part}"
        output = f"{part}_labelled.jsonl"

        def label(folder: Path) -> dict[str, Any]:
            from cwpo.annotation.annotate import annotate_dataset

            result = annotate_dataset(
                str(annotator.path / "annotator"),
                self.config.data.dataset,
                folder / output,
                part=part,
                split_ratio=self.config.data.split_ratio,
                split_seed=seed,
                confidence=weak.confidence,
                batch_size=64,
                max_length=self.config.data.max_length,
                chat_template_for_text=self.config.data.chat_template_for_text,
                report_dir=folder,
                progress=False,
                trainer={"precision": self.weak_trainer["precision"]},
            )
            return {"n_pairs": result.n_pairs, "agreement": result.agreement,
                    "pairs_per_second": result.pairs_per_second}  # fmt: skip

        # A kill mid-stage keeps the scores done so far: annotate resumes from its parts (their manifest is checked).
        return self.stages.run(name, inputs, label, keep=(f"{output}.parts",))

    # -- WS-DPO: the weak model as a DPO policy, labelling by its implicit reward ---------------------------
    def ws_labels(self, seed: int) -> StageResult:
        weak = self.config.weak
        backbone = weak.backbone if weak.ws_backbone is None else weak.ws_backbone
        base = {
            **self._data_inputs,
            "seed": seed,
            "backbone": _plain(backbone),
            "trainer": self.ws_trainer,
        }
        sft = self._sft_stage("ws_sft", base, self._start_spec(backbone, seed), None, self.config.data.dataset, "d_l",
                              seed, weak.ws_sft_epochs, weak.ws_lr, weak.batch_size)  # fmt: skip
        policy_inputs = {**base, "sft": sft.key, "epochs": weak.ws_dpo_epochs, "lr": weak.ws_lr, "beta": weak.ws_beta,
                         **self._speed_inputs}  # fmt: skip

        def train_policy(folder: Path) -> dict[str, Any]:
            self._fit_policy(folder, self._sft_model(sft, backbone, seed), None, MethodSpec("ws", "human"),
                             self.config.data.dataset, "d_l", seed, epochs=weak.ws_dpo_epochs, lr=weak.ws_lr,
                             beta=weak.ws_beta, batch_size=weak.batch_size,
                             trainer=self.ws_trainer)  # fmt: skip
            return {}

        policy = self.stages.run("ws_policy", policy_inputs, train_policy)

        def label(folder: Path) -> dict[str, Any]:
            from cwpo.pipeline.implicit import label_by_implicit_reward

            reference = self._sft_model(sft, backbone, seed)
            d_u = self._datamodule("PairDataModule", self.config.data.dataset, reference[0], "d_u", seed, 64,
                                   group_by_length=False)  # fmt: skip
            return label_by_implicit_reward(reference, policy.path / "model", d_u, folder, beta=weak.ws_beta,
                                            confidence=weak.confidence)  # fmt: skip

        return self.stages.run("ws_annotate", {**policy_inputs, "policy": policy.key, "confidence": weak.confidence},
                               label)  # fmt: skip

    # -- stage 3: the strong model --------------------------------------------------------------------------
    def _sft_stage(self, name, base_inputs, spec, lora, dataset, part, seed, epochs, lr, batch_size) -> StageResult:
        inputs = {**base_inputs, "lora": _plain(lora), "epochs": epochs, "lr": lr, "batch_size": batch_size}

        def fit(folder: Path) -> dict[str, Any]:
            import lightning as L

            from cwpo.modules.sft import SFTModule

            L.seed_everything(seed, workers=True, verbose=False)
            out = folder / ("adapter" if lora is not None else "model")
            warmup = self.config.strong.warmup_steps
            module = SFTModule(spec, lora=lora, optim=OptimConfig(lr=lr, warmup_steps=warmup), export_dir=str(out))
            data = self._datamodule("SFTDataModule", dataset, spec, part, seed, batch_size)
            trainer = _trainer(folder, epochs, base_inputs["trainer"])
            trainer.fit(module, data)
            return {"train_loss": _metric(trainer, "train/loss")}

        return self.stages.run(name, inputs, fit)

    def _sft_model(self, sft: StageResult, backbone: Any, seed: int) -> tuple[ModelSpec, str | None]:
        """``(spec, init_adapter)`` of an SFT stage's model: a saved full model, or base + SFT adapter."""
        if (sft.path / "model").exists():
            # The seed still matters for a saved model: it seeds the PO LoRA adapter's init (build_causal_lm).
            return ModelSpec(str(sft.path / "model"), seed=seed), None
        base = self._strong_start(seed) if backbone is self.config.strong.backbone else self._start_spec(backbone, seed)
        return base, str(sft.path / "adapter")

    def pretrain(self) -> StageResult | None:
        """The strong model's pretraining stage (one for every seed), or ``None`` when it has none: causal-LM
        training from random weights on unlabelled synthetic text (:class:`cwpo.pipeline.config.PretrainConfig`)."""
        strong, data = self.config.strong, self.config.data
        spec = as_model_spec(_plain(strong.backbone))
        if strong.pretrain is None or not spec.from_scratch:
            return None
        dataset = _plain(data.dataset)
        name = dataset if isinstance(dataset, str) else dataset.get("name") if isinstance(dataset, dict) else None
        if name != "synthetic":
            raise ConfigError(
                f"strong.pretrain needs the synthetic dataset (its generator writes the unlabelled text), got "
                f"{dataset!r}; set strong.pretrain: null"
            )
        data_seed = int((dataset.get("args") or {}).get("seed", 0)) if isinstance(dataset, dict) else 0
        settings = _plain(strong.pretrain)
        inputs = {"backbone": _plain(strong.backbone), "pretrain": settings, "data_seed": data_seed,
                  "max_length": data.max_length, "trainer": self.strong_trainer}  # fmt: skip

        def fit(folder: Path) -> dict[str, Any]:
            import lightning as L
            from datasets import Dataset

            from cwpo.data.files import save_pairs
            from cwpo.data.synthetic import pretraining_records
            from cwpo.modules.sft import SFTModule

            corpus = save_pairs(Dataset.from_list(pretraining_records(settings["texts"], data_seed)),
                                folder / "corpus.jsonl")  # fmt: skip
            L.seed_everything(spec.seed, workers=True, verbose=False)
            optim = OptimConfig(lr=settings["lr"], warmup_steps=strong.warmup_steps)
            module = SFTModule(spec, lora=None, optim=optim, export_dir=str(folder / "model"))
            loader = self._datamodule("SFTDataModule", str(corpus), spec, "all", spec.seed, settings["batch_size"])
            trainer = _trainer(folder, settings["epochs"], self.strong_trainer)
            trainer.fit(module, loader)
            return {"train_loss": _metric(trainer, "train/loss"), "texts": settings["texts"]}

        return self.stages.run("pretrain", inputs, fit)

    def _strong_start(self, seed: int) -> ModelSpec:
        """The strong model SFT starts from: the pretrained model when there is a pretraining stage."""
        if self._pretrained is not None:
            return ModelSpec(str(self._pretrained.path / "model"), seed=_spec(self.config.strong.backbone, seed).seed)
        return self._start_spec(self.config.strong.backbone, seed)

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
        if key not in self._materialised:

            def save(folder: Path) -> dict[str, Any]:
                from cwpo.models import save_dequantised

                save_dequantised(spec, folder / "model")
                return {}

            self._materialised[key] = self.stages.run("dequantize", identity, save)
        return ModelSpec(str(self._materialised[key].path / "model"), dtype=spec.dtype, seed=spec.seed)

    def sft(self, seed: int, source: str, labels) -> StageResult:
        strong = self.config.strong
        dataset, part, label_key = labels
        base = {**self._data_inputs, "seed": seed, "backbone": _plain(strong.backbone), "labels": label_key,
                "trainer": self.strong_trainer,
                "pretrain": None if self._pretrained is None else self._pretrained.key}  # fmt: skip
        return self._sft_stage("sft", base, self._strong_start(seed), strong.sft_lora, dataset, part, seed,
                               strong.sft_epochs, strong.sft_lr, strong.batch_size)  # fmt: skip

    def _policy_kwargs(self, folder: Path, lora, method: MethodSpec, *, lr: float, beta: float) -> dict[str, Any]:
        """The arguments PolicyModule and OnlinePolicyModule share: objective, weighting, reference, optimiser, export."""
        strong = self.config.strong
        reference = strong.reference
        if method.online and reference == "precomputed":
            reference = "adapter_disabled"  # on-policy pairs are new at every step: nothing to precompute
        if lora is None and reference == "adapter_disabled":
            reference = "separate"  # a full fine-tune has no adapter to switch off
        return {
            "lora": lora,
            "optim": OptimConfig(lr=lr, warmup_steps=strong.warmup_steps),
            "objective": method.objective,
            "beta": beta,
            "tau": strong.tau,
            "epsilon": strong.epsilon,
            "weighting": method.weighting,
            "reference": reference,
            "export_dir": str(folder / ("adapter" if lora is not None else "model")),
        }

    def _fit_policy(self, folder, model, lora, method, dataset, part, seed, *, epochs, lr, beta, batch_size, trainer):
        import lightning as L

        from cwpo.modules.policy import PolicyModule

        L.seed_everything(seed, workers=True, verbose=False)
        spec, init_adapter = model
        strong = self.config.strong
        module = PolicyModule(
            spec,
            init_adapter=init_adapter,
            top_n_fraction=method.top_n_fraction,
            reference_cache_dir=str(folder / "reference_cache"),
            prefix_sharing=strong.prefix_sharing,
            logps_impl=strong.logps_impl,
            **self._policy_kwargs(folder, lora, method, lr=lr, beta=beta),
        )
        data = self._datamodule("PairDataModule", dataset, spec, part, seed, batch_size,
                                prefix_sharing=strong.prefix_sharing)  # fmt: skip
        trainer = _trainer(folder, epochs, trainer)
        trainer.fit(module, data)
        return trainer

    @property
    def _speed_inputs(self) -> dict[str, Any]:
        """The offline PO speed settings that differ from their defaults (in stage keys; defaults keep old keys)."""
        strong = self.config.strong
        speed = {"prefix_sharing": strong.prefix_sharing, "logps_impl": strong.logps_impl}
        return {"speed": speed} if speed != {"prefix_sharing": False, "logps_impl": "logits"} else {}

    def po(self, seed: int, method: MethodSpec, sft: StageResult, labels) -> StageResult:
        strong = self.config.strong
        dataset, part, label_key = labels
        inputs = {**self._data_inputs, "seed": seed, "sft": sft.key, "labels": label_key,
                  "method": _plain(method) | {"name": None}, "lora": _plain(strong.po_lora), "epochs": strong.po_epochs,
                  "lr": strong.po_lr, "beta": strong.beta, "tau": strong.tau, "epsilon": strong.epsilon,
                  "reference": strong.reference, "batch_size": strong.batch_size, "trainer": self.strong_trainer,
                  **self._speed_inputs}  # fmt: skip
        if method.online:
            return self._online_po(seed, method, sft, inputs)

        def fit(folder: Path) -> dict[str, Any]:
            labels_path = dataset
            if method.weighting == "confidence" and method.scheme != self.config.weak.confidence:
                labels_path = str(_rescheme(Path(dataset), folder / "labels.jsonl", method.scheme))
            trainer = self._fit_policy(folder, self._sft_model(sft, strong.backbone, seed), strong.po_lora, method,
                                       labels_path, part, seed, epochs=strong.po_epochs, lr=strong.po_lr,
                                       beta=strong.beta, batch_size=strong.batch_size,
                                       trainer=self.strong_trainer)  # fmt: skip
            return {
                "train_loss": _metric(trainer, "train/loss"),
                "reward_accuracy": _metric(trainer, "rewards/accuracies"),
            }

        return self.stages.run("po", inputs, fit)

    def _online_po(self, seed: int, method: MethodSpec, sft: StageResult, inputs: dict[str, Any]) -> StageResult:
        """Online CW-DPO (appendix J.5): the SFT policy samples pairs for D_U's prompts, the annotator labels them."""
        strong, data = self.config.strong, self.config.data
        annotator = self._annotator_stages[seed]
        judge = self.config.eval.judge
        monitor = dict(judge) if judge.get("kind") == "synthetic_gold" else None  # cheap enough to run every step
        inputs = {**inputs, "annotator": annotator.key, "batch_size": strong.online_batch_size,
                  "online": {"max_new_tokens": strong.online_max_new_tokens, "temperature": strong.online_temperature,
                             "monitor": monitor}}  # fmt: skip

        def fit(folder: Path) -> dict[str, Any]:
            import lightning as L

            from cwpo.modules.online import OnlinePolicyModule

            L.seed_everything(seed, workers=True, verbose=False)
            spec, init_adapter = self._sft_model(sft, strong.backbone, seed)
            module = OnlinePolicyModule(
                spec,
                str(annotator.path / "annotator"),
                init_adapter=init_adapter,
                confidence=method.scheme,
                max_new_tokens=strong.online_max_new_tokens,
                temperature=strong.online_temperature,
                sample_seed=seed,
                annotator_max_length=data.max_length,
                chat_template_for_text=data.chat_template_for_text,
                monitor_judge=monitor,
                **self._policy_kwargs(folder, strong.po_lora, method, lr=strong.po_lr, beta=strong.beta),
            )
            prompts = self._datamodule("PromptDataModule", data.dataset, spec, "d_u", seed, strong.online_batch_size)
            trainer = _trainer(folder, strong.po_epochs, self.strong_trainer)
            trainer.fit(module, prompts)
            return {"train_loss": _metric(trainer, "train/loss"), "reward_accuracy": _metric(trainer, "rewards/accuracies"),
                    "gold_agreement_last_epoch": _metric(trainer, "online/gold_agreement_epoch"),
                    "identical_last_epoch": _metric(trainer, "online/identical_epoch"),
                    "response_tokens_last_epoch": _metric(trainer, "online/response_tokens_epoch")}  # fmt: skip

        return self.stages.run("po", inputs, fit)

    # -- evaluation -----------------------------------------------------------------------------------------
    def _test_prompts(self) -> list[Any]:
        from cwpo.data import load_part

        test = load_part(self.config.data.dataset, "test")
        n = self.config.data.test_prompts
        prompts = test["prompt"]
        return list(prompts if n is None else prompts[:n])

    def generate(self, seed: int, model_stage: StageResult, model: tuple[ModelSpec, str | None], adapter: str | None):
        ev = self.config.eval
        settings = {k: v for k, v in _plain(ev).items() if k != "show_generations"}
        if settings["max_prompt_length"] is None:
            del settings["max_prompt_length"]  # the key of a config without it stays as it was
        inputs = {"model": model_stage.key, "seed": seed, "eval": settings | {"judge": None},
                  "data": self._data_inputs, "test_prompts": self.config.data.test_prompts,
                  "trainer": self.strong_trainer}  # fmt: skip

        def run(folder: Path) -> dict[str, Any]:
            from cwpo.evaluation.generate import GenerationConfig, default_trainer, generate
            from cwpo.models import load_tokenizer
            from cwpo.modules.export import merge_adapter
            from cwpo.modules.sft import build_causal_lm

            spec, init_adapter = model
            lm = build_causal_lm(spec, init_adapter=init_adapter, trainable=False)
            if adapter is not None:
                lm = merge_adapter(lm, adapter)
            config = GenerationConfig(max_new_tokens=ev.max_new_tokens, temperature=ev.temperature, top_p=ev.top_p,
                                      seed=seed, batch_size=ev.batch_size, progress=False,
                                      max_prompt_length=ev.max_prompt_length,
                                      chat_template_for_text=self.config.data.chat_template_for_text)  # fmt: skip
            trainer = default_trainer(**self.strong_trainer)
            records = generate(lm, load_tokenizer(spec), self._test_prompts(), config, trainer=trainer,
                               output_path=folder / "generations.jsonl")  # fmt: skip
            return {
                "n": len(records),
                "mean_new_tokens": sum(r["n_new_tokens"] for r in records) / max(len(records), 1),
            }

        return self.stages.run("generate", inputs, run)

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
        strong = self.config.strong
        inputs = {"model": key, "seed": seed, "data": self._data_inputs, "truncation": self.config.data.truncation,
                  "precision": self.strong_trainer.get("precision"), "logps_impl": strong.logps_impl}  # fmt: skip

        def run(folder: Path) -> dict[str, Any]:
            from cwpo.modules.export import merge_adapter
            from cwpo.modules.policy import pair_logps
            from cwpo.modules.reference import collect_by_index, length_sorted_loader
            from cwpo.modules.sft import build_causal_lm

            lm = build_causal_lm(model[0], init_adapter=model[1], trainable=False)
            if adapter is not None:
                lm = merge_adapter(lm, adapter)
            test = self._datamodule("PairDataModule", self.config.data.dataset, model[0], "test", seed, 64,
                                    group_by_length=False)  # fmt: skip
            test.setup("fit")
            bf16 = str(self.strong_trainer.get("precision", "")).startswith("bf16")

            def values(batch):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = pair_logps(lm, batch, impl=strong.logps_impl)
                parts = (out.chosen_logps, out.rejected_logps, out.chosen_counts, out.rejected_counts)
                return torch.stack([p.float() for p in parts], dim=1)

            loader = length_sorted_loader(test.train_dataloader(), batch_size=16)
            table = collect_by_index(loader, values, len(loader.dataset))
            from cwpo.io import atomic_path

            with atomic_path(folder / "logps.pt") as tmp:
                torch.save({"table": table, "ids": list(test.train_dataset["id"])}, tmp)
            return {"pairs": int(table.shape[0])}

        stage = self.stages.run("test_logps", inputs, run)
        return torch.load(stage.path / "logps.pt", weights_only=True), stage

    def _test_gold_margins(self) -> torch.Tensor | None:
        """Gold reward margins (chosen − rejected) of the tokenised test pairs, ``None`` when the data has none."""
        if not hasattr(self, "_gold_margins"):
            from cwpo.data import load_part

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

    def heldout(self, seed: int, po: StageResult, sft: StageResult, model, adapter: str | None) -> StageResult:
        """Held-out preference accuracy: on the test pairs, does the policy's implicit reward
        ``log π(y|x) − log π_SFT(y|x)`` (β > 0 does not change its sign) order the two responses as the human did,
        and as the gold reward does when there is one? (Ties count as wrong.) Per-pair human outcomes are in
        ``heldout.json`` for paired comparisons."""
        reference = self._sft_model(sft, self.config.strong.backbone, seed)
        ref, ref_stage = self._test_logps(seed, sft.key, reference)
        policy, policy_stage = self._test_logps(seed, po.key, model, adapter)
        inputs = {"po": po.key, "sft": sft.key, "seed": seed, "data": self._data_inputs,
                  "logps": [ref_stage.key, policy_stage.key]}  # fmt: skip

        def run(folder: Path) -> dict[str, Any]:
            h = (policy["table"][:, :2] - ref["table"][:, :2]).double()
            summary, outcomes = self._accuracy(h[:, 0] - h[:, 1], policy["ids"])
            write_json(folder / "heldout.json", {"ids": policy["ids"], "human_correct": outcomes})
            return summary

        return self.stages.run("heldout", inputs, run)

    def sft_heldout(self, seed: int, source: str, sft: StageResult) -> dict[str, Any]:
        """Held-out preference accuracy of an SFT model, which has no DPO reference of its own: its implicit reward
        against the model it started from, ``log π_SFT(y|x) − log π_base(y|x)`` (the SFT adapter's log-ratio), and,
        beside it, the plain length-normalised log-likelihood ``log π_SFT(y|x) / |y|`` (no reference)."""
        backbone = self.config.strong.backbone
        base, base_stage = self._test_logps(seed, {"base": _plain(backbone),
                                                   "pretrain": None if self._pretrained is None
                                                   else self._pretrained.key}, (self._strong_start(seed), None))  # fmt: skip
        model, _ = self._test_logps(seed, sft.key, self._sft_model(sft, backbone, seed))
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

    # -- everything -----------------------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        if self.config.torch_threads is not None:
            torch.set_num_threads(self.config.torch_threads)
        rows = []
        sources = {m.labels for m in self.methods}
        self.sft_rows: list[dict[str, Any]] = []  # no gold: the SFT models' held-out accuracy
        self.generation_files: dict[str, Path] = {}  # first seed's generations, by method (and ``sft (<labels>)``)
        with _quiet():
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
                    if not self.has_gold:  # no gold model: the annotator is judged on the held-out human labels
                        self._annotate_test_stages[seed] = self.annotate(seed, annotator, "test")
                if "ws" in sources:
                    ws = self.ws_labels(seed)
                sft_stages, sft_generations = {}, {}
                for source in sorted(sources):
                    labels = self._labels(source, seed, weak, ws)
                    sft = self.sft(seed, source, labels)
                    sft_stages[source] = sft
                    sft_generations[source] = self.generate(
                        seed, sft, self._sft_model(sft, self.config.strong.backbone, seed), None
                    )
                    self.generation_files.setdefault(
                        f"sft ({source})", sft_generations[source].path / "generations.jsonl"
                    )
                    if not self.has_gold:
                        self.sft_rows.append(self.sft_heldout(seed, source, sft))
                for method in self.methods:
                    labels = self._labels(method.labels, seed, weak, ws)
                    sft = sft_stages[method.labels]
                    po = self.po(seed, method, sft, labels)
                    adapter = str(po.path / "adapter") if (po.path / "adapter").exists() else None
                    model = self._sft_model(sft, self.config.strong.backbone, seed)
                    if adapter is None:
                        model = (ModelSpec(str(po.path / "model")), None)
                    generation = self.generate(seed, po, model, adapter)
                    heldout = self.heldout(seed, po, sft, model, adapter) if not method.online else None
                    family, objective = method_family(method)
                    self.generation_files.setdefault(method.name, generation.path / "generations.jsonl")
                    rows.append({"method": method.name, "family": family, "objective": objective, "seed": seed,
                                 **self.gra(generation, sft_generations[method.labels]),
                                 **self.label_stats(method, labels), **(heldout.summary if heldout else {}),
                                 **annotator_summary})  # fmt: skip
                    if heldout is not None and not self.has_gold:  # per-pair outcomes for the paired comparisons
                        outcomes = json.loads((heldout.path / "heldout.json").read_text())["human_correct"]
                        rows[-1]["per_prompt"] = rows[-1].get("per_prompt", {}) | {
                            "heldout": [100.0 * v for v in outcomes]}  # fmt: skip
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
