"""The experiment config of ``cwpo run``: the stand-alone commands' own blocks, one per stage, plus the methods and
the seeds.

Each training stage has the blocks its ``cwpo fit`` config has: ``model`` (the LightningModule's arguments, under
the names the module takes them: ``annotator.model`` is :class:`cwpo.modules.annotator.AnnotatorModule`'s,
``sft.model`` :class:`cwpo.modules.sft.SFTModule`'s, ``policy.model`` :class:`cwpo.modules.policy.PolicyModule`'s),
``data`` (the datamodule's per-stage arguments: batch size, workers, ...) and ``trainer`` (``lightning.Trainer``
arguments; ``max_epochs`` is the stage's epochs). The top-level ``data`` holds what every stage shares (the dataset,
its split and token budget), the top-level ``trainer`` what every stage's Trainer shares (accelerator, devices);
``annotate`` is ``cwpo annotate``'s settings and ``eval`` ``cwpo evaluate``'s. A module argument the pipeline sets
itself (the model a stage starts from, the method's objective and weighting, where it exports) is not in a block.

With no YAML, every field's default gives the embedded default: the synthetic task, a tiny weak annotator and a
tiny strong model pretrained on unlabelled task text, Human / Human-100 / WS-DPO / DPO (c = 1) / CW-DPO / CW-IPO /
CW-rDPO / top-30 %, five seeds, 500 test prompts; PO settings chosen on the Human method alone.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cwpo.annotation.annotate import _annotate_dataset
from cwpo.data.datamodules import PreferenceDataModule, PromptDataModule
from cwpo.errors import ConfigError
from cwpo.modules.annotator import AnnotatorModule
from cwpo.modules.online import OnlinePolicyModule
from cwpo.modules.optim import OptimConfig
from cwpo.modules.policy import PolicyModule
from cwpo.modules.sft import SFTModule
from cwpo.pipeline.methods import parse_method
from cwpo.precision import PRECISIONS


def _tiny_llama(hidden: int, layers: int, heads: int) -> dict[str, Any]:
    return {
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "max_position_embeddings": 128,
        "tie_word_embeddings": True,
    }


def _weak_backbone() -> dict[str, Any]:
    return {"name_or_path": "synthetic", "from_scratch": True, "config": _tiny_llama(32, 2, 4), "seed": 1}


def _strong_backbone() -> dict[str, Any]:
    return {"name_or_path": "synthetic", "from_scratch": True, "config": _tiny_llama(64, 3, 4), "seed": 2}


# -- blocks built from the modules' own signatures ---------------------------------------------------------------
def _arguments_doc(target: Any) -> dict[str, str]:
    """``name: text`` of the ``Args:`` section of ``target``'s docstring (the class's, for a class)."""
    doc = inspect.getdoc(target) or ""
    out: dict[str, str] = {}
    if "Args:" not in doc:
        return out
    name = None
    for line in doc.split("Args:", 1)[1].splitlines():
        if line and not line.startswith(" "):
            break
        stripped = line.strip()
        head = stripped.split(":", 1)[0]
        if line.startswith("    ") and not line.startswith("     ") and ":" in stripped and head.isidentifier():
            name = head
            out[name] = stripped.split(":", 1)[1].strip()
        elif name and stripped:
            out[name] += " " + stripped
    return out


def block(
    name: str,
    target: Any,
    *,
    owned: tuple[str, ...] = (),
    keep: tuple[str, ...] | None = None,
    defaults: dict[str, Any] | None = None,
    types: dict[str, Any] | None = None,
    doc: str = "",
) -> type:
    """A dataclass of ``target``'s arguments (a class's ``__init__``, or a function), typed and documented as
    ``target`` types and documents them, defaulting to ``target``'s defaults or ``defaults``: so an experiment YAML
    names each setting as the module (or ``cwpo annotate``) does. ``owned``: arguments the pipeline sets, left out;
    ``keep``: only these (``None``: all the others); ``types``: a type to use instead of ``target``'s."""
    function = target.__init__ if isinstance(target, type) else target
    hints = typing.get_type_hints(function)
    described = _arguments_doc(target)
    defaults, types = defaults or {}, types or {}
    fields, lines = [], []
    for parameter in list(inspect.signature(function).parameters.values()):
        if parameter.name in ("self", *owned) or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if keep is not None and parameter.name not in keep:
            continue
        value = defaults.get(parameter.name, parameter.default)
        if value is inspect.Parameter.empty:
            raise TypeError(f"{name}: {parameter.name} needs a default")
        fields.append((parameter.name, types.get(parameter.name, hints[parameter.name]),
                       field(default_factory=lambda v=value: copy.deepcopy(v))))  # fmt: skip
        lines.append(f"    {parameter.name}: {described.get(parameter.name, '')}")
    owner = target.__qualname__ if isinstance(target, type) else target.__name__
    cls = dataclasses.make_dataclass(name, fields)
    cls.__module__ = __name__
    cls.__doc__ = f"{doc or f'The arguments of {owner}.'}\n\nArgs:\n" + "\n".join(lines)
    return cls


def block_arguments(value: Any) -> dict[str, Any]:
    """A block's values by argument name, each field read (so a recorded config sees every one read)."""
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(_unwrap(value))}


def _unwrap(value: Any) -> Any:
    from cwpo.pipeline.stages import unwrap

    return unwrap(value)


# What the pipeline sets itself, per module: the model a stage starts from, the method's objective and weighting,
# where a stage exports, and what the shared data section already says.
_SFT_OWNED = ("init_adapter", "export_dir")
_POLICY_OWNED = ("backbone", "init_adapter", "objective", "weighting", "top_n_fraction", "reference_cache_dir",
                 "export_dir")  # fmt: skip
_DATA_OWNED = ("dataset", "tokenizer", "part", "val_part", "split_ratio", "split_seed", "max_length", "truncation",
               "chat_template_for_text", "seed", "prefix_sharing")  # fmt: skip

AnnotatorModel = block("AnnotatorModel", AnnotatorModule, defaults={
    "backbone": _weak_backbone(), "optim": OptimConfig(lr=2e-3, optimizer="adam", scheduler="constant")},
    types={"backbone": Any}, doc="The weak annotator's arguments (AnnotatorModule; paper: OPT-125M, Qwen2.5-0.5B).")  # fmt: skip
SFTModel = block("SFTModel", SFTModule, owned=_SFT_OWNED, defaults={
    "backbone": _strong_backbone(), "lora": None, "optim": OptimConfig(lr=3e-3, warmup_steps=0.1),
    "export_merged": True}, types={"backbone": Any},
    doc="SFTModule's arguments (the strong model's SFT). With ``lora``, ``export_merged`` also saves the merged SFT "
        "model: the base the PO adapters name (``false`` saves the disk, 26 GB per SFT stage of a 13B model, and "
        "leaves a two-step load); without ``lora`` it does not apply.")  # fmt: skip
WeakSFTModel = block("WeakSFTModel", SFTModule, owned=_SFT_OWNED, defaults={
    "backbone": None, "lora": None, "optim": OptimConfig(lr=2e-3, warmup_steps=0.1)}, types={"backbone": Any},
    doc="SFTModule's arguments for WS-DPO's weak policy. ``backbone``: a causal LM when the annotator's backbone is "
        "not one (an encoder such as MiniLM); ``None``: the annotator's.")  # fmt: skip
PretrainModel = block("PretrainModel", SFTModule, owned=(*_SFT_OWNED, "backbone", "lora", "export_merged"),
                      defaults={"optim": OptimConfig(lr=3e-3, warmup_steps=10)},
                      doc="SFTModule's arguments for pretraining ``sft.model.backbone`` (full training).")  # fmt: skip
PolicyModel = block("PolicyModel", PolicyModule, owned=_POLICY_OWNED, defaults={
    "lora": None, "optim": OptimConfig(lr=5e-4, warmup_steps=0.1), "beta": 0.3, "tau": 0.5, "epsilon": 0.1,
    "reference": "precomputed"},
    doc="PolicyModule's arguments (the objective and weighting come from the method; online methods take the ones "
        "OnlinePolicyModule has). ``lora: null``: full fine-tuning (the embedded default: the sweep on the Human "
        "method, benchmarks/sweep_human.py, found LoRA r 8 on the tiny model either barely moving it or collapsing "
        "it); ``reference: adapter_disabled`` becomes ``separate`` without LoRA.")  # fmt: skip
WeakPolicyModel = block("WeakPolicyModel", PolicyModule, owned=_POLICY_OWNED, defaults={
    "lora": None, "optim": OptimConfig(lr=2e-3, warmup_steps=0.1), "beta": 0.1, "tau": 0.5, "epsilon": 0.1,
    "reference": "precomputed"},
    doc="PolicyModule's arguments for WS-DPO's weak policy (DPO on D_L); ``beta`` is also the scale of the implicit "
        "reward it labels D_U with.")  # fmt: skip
OnlineModel = block("OnlineModel", OnlinePolicyModule, keep=("max_new_tokens", "temperature", "top_p"),
                    defaults={"max_new_tokens": 24},
                    doc="OnlinePolicyModule's own arguments (the rest are ``policy.model``'s): sampling during "
                        "training.")  # fmt: skip
StageData = block("StageData", PreferenceDataModule, owned=_DATA_OWNED, defaults={"batch_size": 32},
                  doc="A stage's datamodule arguments (the shared ones are in the top-level ``data``).")  # fmt: skip
PromptData = block("PromptData", PromptDataModule, owned=_DATA_OWNED, defaults={"batch_size": 32},
                   doc="The online methods' prompt datamodule arguments (``batch_size``: prompts per step, one "
                       "sampled pair each).")  # fmt: skip
AnnotateConfig = block("AnnotateConfig", _annotate_dataset, keep=("confidence", "batch_size", "min_prompt_tokens",
                       "num_workers"), defaults={"batch_size": 64},
                       doc="``cwpo annotate``'s settings (confidence: Eq. 8's ``cw``).")  # fmt: skip


def _data(**values: Any):
    return field(default_factory=lambda: StageData(**values))


def _trainer(**values: Any):
    return field(default_factory=lambda: dict(values))


@dataclass
class DataConfig:
    """What every stage shares of the data: which pairs, how they are split and tokenised (the datamodules'
    arguments of these names).

    Args:
        dataset: a :class:`cwpo.data.DatasetSpec` value: a loader name, a local file, or a dict of its fields.
        split_ratio: share of the training split that is D_L (human labels kept); the rest is D_U.
        max_length: token budget per pair (paper: 512 for HH-RLHF).
        test_prompts: evaluate GRA on at most this many test prompts (``None``: all).
        chat_template_for_text: send text prompts through the tokenizer's chat template.
        truncation: ``drop`` (the paper's length filter: pairs over ``max_length`` are dropped) or ``keep_end``
            (long prompts are cut from the left, keeping their end; see :class:`cwpo.data.TokenizeConfig`), for
            every stage that tokenises pairs.
    """

    dataset: Any = field(default_factory=lambda: {"name": "synthetic", "args": {"n_pairs": 2400, "n_test_pairs": 500}})
    split_ratio: float = 0.3
    max_length: int = 64
    test_prompts: int | None = 500
    chat_template_for_text: bool = False
    truncation: str = "drop"


@dataclass
class AnnotatorStage:
    """Stage 1, the weak annotator: ``cwpo fit --model annotator``'s blocks (trained on D_L, validated on a tenth
    of it held out). Paper: 5 epochs, batch 32."""

    model: AnnotatorModel = field(default_factory=AnnotatorModel)
    data: StageData = _data(batch_size=32, val_fraction=0.1)
    trainer: dict[str, Any] = _trainer(max_epochs=5)


@dataclass
class WeakSFTStage:
    """WS-DPO, step 1: SFT of the weak policy on D_L's chosen responses (``trainer.max_epochs: 0``: none)."""

    model: WeakSFTModel = field(default_factory=WeakSFTModel)
    data: StageData = _data(batch_size=32)
    trainer: dict[str, Any] = _trainer(max_epochs=3)


@dataclass
class WeakPolicyStage:
    """WS-DPO, step 2: DPO of the weak policy on D_L; its implicit reward then labels D_U."""

    model: WeakPolicyModel = field(default_factory=WeakPolicyModel)
    data: StageData = _data(batch_size=32)
    trainer: dict[str, Any] = _trainer(max_epochs=2)


@dataclass
class PretrainStage:
    """A pretraining stage for a strong model built from scratch: causal-LM training on unlabelled text of the
    synthetic task (prompts with responses of every quality, :func:`cwpo.data.synthetic.pretraining_records`), so
    that SFT and preference optimisation start from a miniature pretrained LM rather than random weights. One
    pretrained model serves every seed, as one public checkpoint serves every run of a paper.

    Args:
        texts: number of prompt + response texts (drawn fresh from the generator; no labels).
        model: the SFT module's arguments for it.
        data: its datamodule's.
        trainer: its Trainer's.
    """

    texts: int = 20000
    model: PretrainModel = field(default_factory=PretrainModel)
    data: StageData = _data(batch_size=64)
    trainer: dict[str, Any] = _trainer(max_epochs=1)


@dataclass
class SFTStage:
    """Stage 3, SFT of the strong model on each label source's chosen responses: ``cwpo fit --model sft``'s
    blocks. Paper: 3 epochs."""

    model: SFTModel = field(default_factory=SFTModel)
    data: StageData = _data(batch_size=32)
    trainer: dict[str, Any] = _trainer(max_epochs=4)


@dataclass
class PolicyStage:
    """Stage 4, preference optimisation of the SFT model: ``cwpo fit --model policy``'s blocks. Paper: 5 epochs."""

    model: PolicyModel = field(default_factory=PolicyModel)
    data: StageData = _data(batch_size=32)
    trainer: dict[str, Any] = _trainer(max_epochs=3)


@dataclass
class OnlineStage:
    """Online methods (appendix J.5): what OnlinePolicyModule adds to ``policy.model``, and its prompt batches
    (``data.batch_size`` prompts per step, one sampled pair each); its Trainer is ``policy.trainer``."""

    model: OnlineModel = field(default_factory=OnlineModel)
    data: PromptData = field(default_factory=PromptData)


@dataclass
class EvalConfig:
    """Generation and gold judging.

    Args:
        max_new_tokens: tokens generated per test prompt.
        temperature: sampling temperature (0: greedy).
        top_p: nucleus mass.
        batch_size: prompts per generation batch.
        stop_strings: texts that end a response (e.g. ``["\n\nHuman:"]``): it is cut before the first one and
            counts as ended (EOS rate), like an EOS.
        backend: ``hf`` (transformers ``generate``) or ``vllm`` (``pip install 'cwpo[vllm]'``; each model is saved
            merged first, for vLLM to load).
        judge: ``{"kind": "synthetic_gold"}``, ``{"kind": "reward_model", "spec": ...}``,
            ``{"kind": "steamshp", "spec": ...}``, ``{"kind": "llm", "base_url": ..., "model": ...}`` (an
            OpenAI-compatible endpoint, :class:`cwpo.evaluation.llm_judge.LLMJudgeConfig`), or ``None``: no judge
            (no GRA; data without gold rewards is then judged by held-out human preferences alone).
        max_prompt_length: keep at most this many prompt tokens when generating, cut from the left (``None``:
            whole prompts).
        show_generations: the report shows every method's answer to this many test prompts side by side.
    """

    max_new_tokens: int = 24
    temperature: float = 0.7
    top_p: float = 1.0
    batch_size: int = 100
    stop_strings: list[str] = field(default_factory=list)
    backend: str = "hf"
    judge: dict[str, Any] | None = field(default_factory=lambda: {"kind": "synthetic_gold"})
    max_prompt_length: int | None = None
    show_generations: int = 0


# Stage blocks with a model, data and trainer: name -> its section of ExperimentConfig.
TRAINING_STAGES = ("annotator", "ws_sft", "ws_policy", "pretrain", "sft", "policy")


@dataclass
class ExperimentConfig:
    """One experiment: every stage of every method for every seed.

    Args:
        name: a title for the report.
        run_dir: where stages cache their artefacts and the report is written.
        seeds: one full run per seed (data split, initialisation, order, sampling).
        methods: names parsed by :func:`cwpo.pipeline.methods.parse_method`.
        data: what every stage shares of the data.
        annotator: stage 1, the weak annotator (``model``, ``data``, ``trainer``).
        annotate: stage 2, its labels and confidences on D_U (``cwpo annotate``'s settings).
        ws_sft: WS-DPO's weak policy, its SFT on D_L.
        ws_policy: WS-DPO's weak policy, its DPO on D_L.
        pretrain: the strong model's pretraining when it is built from scratch on the synthetic task; ``None``:
            none (a pretrained backbone needs none; other data has no generator of unlabelled text).
        sft: stage 3, the strong model's SFT (its ``model.backbone`` is the strong model).
        policy: stage 4, preference optimisation.
        online: what online methods add to ``policy``.
        eval: generation and judge.
        trainer: ``lightning.Trainer`` arguments every stage shares (accelerator, devices); a stage's own
            ``trainer`` block wins over them. Generation and held-out log-probs use these alone.
        precision: ``auto`` (bf16 autocast where the hardware runs bf16 fast and the model is at least 256 wide,
            else float32; resolved per model, see :mod:`cwpo.precision`), ``fp32`` or ``bf16``. A ``precision``
            in a trainer block overrides it.
        logger: each training stage's own logger, named ``<stage>/<method>/seed<k>``: ``csv`` (``logs/`` in the
            stage folder), ``tensorboard`` (``<run_dir>/tensorboard``; ``pip install 'cwpo[tensorboard]'``), ``wandb``
            (one W&B group per run; ``pip install 'cwpo[wandb]'``; ``WANDB_MODE=offline`` logs locally) or ``none``.
        verbose: show what the libraries print (Lightning's messages and tips, transformers' and datasets' bars,
            deprecation warnings) and cwpo's progress bars inside long stages even off a terminal (on one they show
            anyway).
        torch_threads: CPU threads for torch (``None``: torch's default). Tiny models run fastest on one thread:
            with two, each small matmul pays more in thread hand-off than it gains (measured 13x slower on a
            loaded 2-core machine).
    """

    name: str = "synthetic (embedded default)"
    run_dir: str = "runs/default"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    methods: list[str] = field(
        default_factory=lambda: ["human", "human-100", "ws-dpo", "dpo", "cw-dpo", "cw-ipo", "cw-rdpo", "top-30"]
    )
    data: DataConfig = field(default_factory=DataConfig)
    annotator: AnnotatorStage = field(default_factory=AnnotatorStage)
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
    ws_sft: WeakSFTStage = field(default_factory=WeakSFTStage)
    ws_policy: WeakPolicyStage = field(default_factory=WeakPolicyStage)
    pretrain: PretrainStage | None = field(default_factory=PretrainStage)
    sft: SFTStage = field(default_factory=SFTStage)
    policy: PolicyStage = field(default_factory=PolicyStage)
    online: OnlineStage = field(default_factory=OnlineStage)
    eval: EvalConfig = field(default_factory=EvalConfig)
    trainer: dict[str, Any] = field(default_factory=dict)
    precision: str = "auto"
    logger: str = "csv"
    verbose: bool = False
    torch_threads: int | None = 1


# -- parsing: YAML, overrides and dicts through one typed parser -------------------------------------------------
def parser(prog: str = "cwpo run", description: str | None = None):
    """The typed parser of :class:`ExperimentConfig` (``cwpo run``'s): a YAML given to ``--config`` merges into the
    defaults block by block, so a YAML names only what it changes (a ``trainer`` or ``backbone`` it gives replaces
    that one value whole)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    p = ArgumentParser(prog=prog, description=description, exit_on_error=False)
    p.add_argument("--config", action=ActionConfigFile, help="experiment YAML (configs/experiments/)")
    p.add_class_arguments(ExperimentConfig, None, as_group=False)
    return p


def from_namespace(p, namespace) -> ExperimentConfig:
    """The :class:`ExperimentConfig` of a parsed ``namespace``. An ``optim`` block its own class refuses (a negative
    lr) is named by its path, in one error with every other problem of the config."""
    bad = []
    for key in namespace.keys():
        if key.endswith(".optim") or ".optim." in key:
            block_key = key[: key.index(".optim") + len(".optim")]
            if block_key in (k for k, _ in bad):
                continue
            try:
                OptimConfig(**namespace[block_key].as_dict())
            except (ConfigError, TypeError) as err:
                bad.append((block_key, err))
    if bad:
        namespace = namespace.clone()
        for key, _ in bad:  # stand-ins, so the rest of the config can be checked too
            namespace[key] = type(namespace[key])(**dataclasses.asdict(OptimConfig()))
    values = p.instantiate(namespace).as_dict()
    values.pop("config", None)
    config = ExperimentConfig(**values)
    if bad:
        problems = [f"{key}: {err}" for key, err in bad] + config_problems(config)
        lines = "\n".join(f"  {line}" for line in problems)
        raise ConfigError(f"the experiment config has {len(problems)} problem(s):\n{lines}")
    return config


def experiment_config(values: dict[str, Any] | None = None) -> ExperimentConfig:
    """The config that a YAML holding ``values`` gives ``cwpo run`` (the same parser: defaults merged block by block,
    types checked): ``experiment_config({"seeds": [0], "sft": {"trainer": {"max_epochs": 1}}})``."""
    from jsonargparse import ArgumentError

    from cwpo.errors import argument_error

    p = parser()
    try:
        namespace = p.parse_object(copy.deepcopy(values or {}))
    except ArgumentError as err:
        raise argument_error(err, "the experiment config") from None
    return from_namespace(p, namespace)


def stage_trainer_problems(config: ExperimentConfig) -> list[str]:
    """Each stage's trainer block: a ``max_epochs`` that is a whole number of epochs."""
    problems = []
    for name in TRAINING_STAGES:
        stage = getattr(config, name)
        if stage is None:
            continue
        epochs = stage.trainer.get("max_epochs") if isinstance(stage.trainer, dict) else None
        least = 0 if name == "ws_sft" else 1  # ws_sft: 0 epochs is no SFT
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < least:
            problems.append(f"{name}.trainer.max_epochs: a stage's trainer block must give its epochs, an integer "
                            f">= {least}, got {epochs!r} (a trainer block replaces the default one whole)")  # fmt: skip
    return problems


# -- validation: every problem of a config, found before the first stage runs -----------------------------------
UNK_LIMIT = 0.05
"""The largest share of ``<unk>`` tokens a tokenizer may give the data (a word-level synthetic tokenizer on real
text gives about 63 %)."""
SAMPLE_PAIRS = 200


def config_problems(config: ExperimentConfig) -> list[str]:
    """Every problem of ``config`` a look at its values finds (no data loaded, no model built): ``field: problem``."""
    problems: list[str] = []

    def need(ok: bool, name: str, text: str) -> None:
        if not ok:
            problems.append(f"{name}: {text}")

    need(bool(config.seeds), "seeds", "name at least one seed")
    need(bool(config.methods), "methods", "name at least one method")
    for name in config.methods:
        try:
            parse_method(name)
        except ConfigError as err:
            problems.append(f"methods: {err}")
    need(
        config.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}, got {config.precision!r}"
    )
    data, ev = config.data, config.eval
    need(0.0 < data.split_ratio < 1.0, "data.split_ratio", f"must be in (0, 1), got {data.split_ratio}")
    need(
        data.truncation in ("drop", "keep_end"), "data.truncation", f"must be drop or keep_end, got {data.truncation!r}"
    )
    need(data.max_length >= 8, "data.max_length", f"must be at least 8 tokens, got {data.max_length}")
    need(data.test_prompts is None or data.test_prompts >= 1, "data.test_prompts", f"must be >= 1 or null, got "
         f"{data.test_prompts}")  # fmt: skip
    problems += stage_trainer_problems(config)
    sizes = [("annotate.batch_size", config.annotate.batch_size), ("eval.batch_size", ev.batch_size),
             ("eval.max_new_tokens", ev.max_new_tokens), ("online.model.max_new_tokens",
             config.online.model.max_new_tokens)]  # fmt: skip
    sizes += [(f"{name}.data.batch_size", getattr(config, name).data.batch_size) for name in
              (*TRAINING_STAGES, "online") if getattr(config, name) is not None]  # fmt: skip
    if config.pretrain is not None:
        sizes.append(("pretrain.texts", config.pretrain.texts))
    for name, value in sizes:
        need(value >= 1, name, f"must be >= 1, got {value}")
    for name in ("policy", "ws_policy"):
        model = getattr(config, name).model
        need(model.beta > 0, f"{name}.model.beta", f"DPO's beta must be > 0, got {model.beta}")
        need(model.tau > 0, f"{name}.model.tau", f"IPO's tau must be > 0, got {model.tau}")
        need(0.0 <= model.epsilon < 0.5, f"{name}.model.epsilon", f"rDPO's flip rate must be in [0, 0.5), got "
             f"{model.epsilon} (at 0.5 its loss divides by 0)")  # fmt: skip
    need(ev.temperature >= 0, "eval.temperature", f"must be >= 0 (0: greedy), got {ev.temperature}")
    need(0.0 < ev.top_p <= 1.0, "eval.top_p", f"must be in (0, 1], got {ev.top_p}")
    need(config.online.model.temperature > 0, "online.model.temperature", f"must be > 0, got "
         f"{config.online.model.temperature}")  # fmt: skip
    from cwpo.losses.confidence import CONFIDENCE_SCHEMES

    need(config.annotate.confidence in CONFIDENCE_SCHEMES, "annotate.confidence", f"must be one of "
         f"{sorted(CONFIDENCE_SCHEMES)}, got {config.annotate.confidence!r}")  # fmt: skip
    problems += _module_problems(config)
    if ev.judge is not None:  # None: no judge (held-out human preferences alone)
        judge = ev.judge if isinstance(ev.judge, dict) else {}
        kinds = ("synthetic_gold", "reward_model", "steamshp", "llm")
        need(judge.get("kind") in kinds, "eval.judge", f"kind must be one of {list(kinds)} or the judge null, got "
             f"{judge.get('kind')!r}")  # fmt: skip
        if judge.get("kind") in ("reward_model", "steamshp"):
            need(judge.get("spec") is not None, "eval.judge", f"kind {judge['kind']!r} needs a model spec")
        if judge.get("kind") == "llm":
            need(bool(judge.get("base_url")) and bool(judge.get("model")), "eval.judge", "kind 'llm' needs base_url "
                 "and model (an OpenAI-compatible endpoint)")  # fmt: skip
    problems += _output_problems(config)
    problems += _source_problems(config)
    return problems


def _module_problems(config: ExperimentConfig) -> list[str]:
    """Each module's own checks of its block (choices, combinations such as ``reference: adapter_disabled`` without
    LoRA), run by building the module object: its model is built later (``configure_model``), so this is cheap."""
    from cwpo.modules.annotator import AnnotatorModule

    spec = {"name_or_path": "synthetic", "from_scratch": True, "config": {"model_type": "llama"}}
    checks = [("annotator.model", lambda: AnnotatorModule(**{**block_arguments(config.annotator.model), "backbone":
              spec}))]  # fmt: skip
    for name in ("sft", "ws_sft"):
        arguments = block_arguments(getattr(config, name).model)
        arguments["export_merged"] = arguments["export_merged"] and arguments["lora"] is not None
        checks.append((f"{name}.model", lambda a=arguments: SFTModule(**{**a, "backbone": spec, "export_dir": "-"})))
    for name in ("policy", "ws_policy"):
        arguments = block_arguments(getattr(config, name).model)
        if arguments["lora"] is None and arguments["reference"] == "adapter_disabled":
            arguments["reference"] = "separate"  # what the pipeline gives a full fine-tune
        arguments["export_merged"] = arguments["export_merged"] and arguments["lora"] is not None
        checks.append(
            (f"{name}.model", lambda a=arguments: PolicyModule(spec, **{**a, "objective": "dpo", "export_dir": "-"}))
        )
    problems = []
    for name, build in checks:
        try:
            build()
        except (ConfigError, TypeError, ValueError) as err:
            problems.append(f"{name}: {err}")
    return problems


def _output_problems(config: ExperimentConfig) -> list[str]:
    """The logger and the generation backend: a package that is missing or a logger every stage would share."""
    import importlib.util

    from cwpo.evaluation import generate
    from cwpo.pipeline.console import LOGGERS

    problems = []
    try:
        generate.GenerationConfig(stop_strings=tuple(config.eval.stop_strings), backend=config.eval.backend)
    except ConfigError as err:
        problems.append(f"eval: {err}")
    if config.eval.backend == "vllm" and not generate.vllm_available():
        problems.append("eval.backend: vllm needs the optional vllm package: pip install 'cwpo[vllm]'")
    kind = config.logger
    if kind not in LOGGERS:
        problems.append(f"logger: must be one of {', '.join(LOGGERS)}, got {kind!r}")
    elif LOGGERS[kind] and importlib.util.find_spec(LOGGERS[kind]) is None:
        problems.append(f"logger: {kind} needs the {LOGGERS[kind]} package: pip install 'cwpo[{kind}]'")
    trainers = [("trainer", config.trainer)] + [(f"{name}.trainer", getattr(config, name).trainer)
                                                for name in TRAINING_STAGES if getattr(config, name) is not None]  # fmt: skip
    for name, trainer in trainers:
        if isinstance(trainer, dict) and trainer.get("logger", False) is not False:
            problems.append(f"{name}.logger: one logger shared by every stage; choose the kind with --logger "
                            f"({'|'.join(LOGGERS)}), each stage gets its own, or set {name}.logger: false")  # fmt: skip
    return problems


def _source_problems(config: ExperimentConfig) -> list[str]:
    """The dataset and the models: specs that build, local files and folders that exist, a test part."""
    from cwpo.data.registry import as_dataset_spec
    from cwpo.models import as_model_spec, check_model_source

    problems = []
    try:
        spec = as_dataset_spec(config.data.dataset)
    except (ConfigError, TypeError) as err:
        problems.append(f"data.dataset: {err}")
    else:
        for name, path in (("path", spec.path), ("test_path", spec.test_path)):
            if path and not Path(path).expanduser().exists():
                problems.append(f"data.dataset: {name} {path} does not exist")
        if spec.name == "local" and not spec.test_path and spec.test_fraction == 0.0:
            problems.append(f"data.dataset: {spec.path} has no test part (generation and judging need one); set "
                            "test_path (a test file) or test_fraction (e.g. 0.1)")  # fmt: skip
        if config.pretrain is not None and spec.name != "synthetic":
            try:
                from_scratch = as_model_spec(config.sft.model.backbone).from_scratch
            except (ConfigError, TypeError):
                from_scratch = False
            if from_scratch:
                problems.append(f"pretrain: needs the synthetic dataset (its generator writes the unlabelled "
                                f"text), got {spec.name!r}; set pretrain: null")  # fmt: skip
    specs = [("annotator.model.backbone", config.annotator.model.backbone),
             ("sft.model.backbone", config.sft.model.backbone)]  # fmt: skip
    if config.ws_sft.model.backbone is not None:
        specs.append(("ws_sft.model.backbone", config.ws_sft.model.backbone))
    if isinstance(config.eval.judge, dict) and config.eval.judge.get("spec") is not None:
        specs.append(("eval.judge.spec", config.eval.judge["spec"]))
    for name, value in specs:
        try:
            model = as_model_spec(value)
            for source in {model.name_or_path, model.tokenizer or model.name_or_path}:
                if source == "synthetic":
                    continue
                if source.startswith("package:"):
                    from cwpo.models import packaged_model_path

                    packaged_model_path(source.removeprefix("package:"))
                else:
                    check_model_source(source)
        except (ConfigError, TypeError) as err:
            problems.append(f"{name}: {err}")
    return problems


def _text(value: Any) -> str:
    """A prompt or response as plain text (chat messages joined)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in value)
    return str(value)


def unk_rate(tokenizer, texts: list[str]) -> float:
    """The share of ``texts``' tokens that ``tokenizer`` maps to its unknown token (0 for byte-level tokenizers)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return 0.0
    total = unknown = 0
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        total += len(ids)
        unknown += sum(1 for i in ids if i == unk)
    return unknown / max(total, 1)


def data_problems(config: ExperimentConfig) -> list[str]:
    """What a sample of the data tells: the tokenizers (and the synthetic gold judge's vocabulary) read it."""
    from cwpo.data import load_part
    from cwpo.data.report import quiet_reports
    from cwpo.errors import CwpoError
    from cwpo.models import as_model_spec, load_tokenizer

    try:
        with quiet_reports():  # the stage that reads the data reports its counts; not this look
            sample = load_part(config.data.dataset, "train")
    except CwpoError as err:
        return [f"data.dataset: {err}"]
    rows = sample.select(range(min(SAMPLE_PAIRS, len(sample))))
    texts = [_text(r["prompt"]) + " " + _text(r["chosen"]) for r in rows]
    problems = []
    readers = [("annotator.model.backbone", config.annotator.model.backbone),
               ("sft.model.backbone", config.sft.model.backbone)]  # fmt: skip
    if isinstance(config.eval.judge, dict) and config.eval.judge.get("kind") == "synthetic_gold":
        readers.append(("eval.judge", {"name_or_path": "synthetic", "from_scratch": True,
                                       "config": {"model_type": "llama"}}))  # fmt: skip
    seen: dict[str, float] = {}
    for name, value in readers:
        spec = as_model_spec(value)
        source = spec.tokenizer or spec.name_or_path
        if source not in seen:
            seen[source] = unk_rate(load_tokenizer(spec), texts)
        rate = seen[source]
        if rate > UNK_LIMIT:
            share = f"{100 * rate:.0f} % of the tokens of {len(texts)} sample pairs of data.dataset"
            limit = f"(limit {100 * UNK_LIMIT:.0f} %)"
            if name == "eval.judge":
                problems.append(f"{name}: the synthetic gold judge knows only the synthetic task's words, and {share} "
                                f"are unknown to it {limit}; use a reward_model judge")  # fmt: skip
            else:
                problems.append(f"{name}: its tokenizer ({source}) maps {share} to <unk> {limit}; use a model whose "
                                "tokenizer reads this data")  # fmt: skip
    return problems


def validate(config: ExperimentConfig, *, data: bool = True) -> None:
    """Raise one :class:`ConfigError` listing every problem of ``config`` (each naming its field), before any stage
    runs: values out of range, unknown names, missing files and folders, a dataset without a test part and, with
    ``data``, a tokenizer or the synthetic judge that cannot read a sample of the data."""
    problems = config_problems(config)
    if data and not problems:
        problems = data_problems(config)
    if problems:
        lines = "\n".join(f"  {p}" for p in problems)
        raise ConfigError(f"the experiment config has {len(problems)} problem(s):\n{lines}")
