"""The experiment config of ``cwpo run``: one YAML names the data, the weak and strong models, the methods and
the seeds. With no YAML, every field's default gives the embedded default: the synthetic task, a tiny weak annotator and a
tiny strong model pretrained on unlabelled task text, Human / Human-100 / WS-DPO / DPO (c = 1) / CW-DPO / CW-IPO /
CW-rDPO / top-30 %, five seeds, 500 test prompts; PO settings chosen on the Human method alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cwpo.errors import ConfigError
from cwpo.models import LoraSpec
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


@dataclass
class DataConfig:
    """Which pairs, and how they are split and tokenised.

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
class WeakConfig:
    """The weak annotator (stage 1) and the weak policy of the WS-DPO baseline.

    Args:
        backbone: a :class:`cwpo.models.ModelSpec` value for the weak model (paper: OPT-125M, Qwen2.5-0.5B).
        epochs: BT training epochs (paper: 5).
        batch_size: pairs per batch (paper: 32).
        lr: learning rate (Adam).
        confidence: confidence scheme written by ``annotate`` (Eq. 8: ``cw``).
        ws_sft_epochs: WS-DPO: SFT epochs of the weak policy on D_L before its DPO (0: no SFT).
        ws_dpo_epochs: WS-DPO: DPO epochs of the weak policy on D_L.
        ws_lr: WS-DPO: learning rate of the weak policy (full fine-tuning).
        ws_beta: WS-DPO: the weak policy's β, also the scale of its implicit reward.
        ws_backbone: WS-DPO: a :class:`cwpo.models.ModelSpec` value for the weak *causal LM* when ``backbone`` is
            not one (an encoder annotator such as MiniLM); ``None``: ``backbone``.
    """

    backbone: Any = field(default_factory=_weak_backbone)
    epochs: int = 5
    batch_size: int = 32
    lr: float = 2e-3
    confidence: str = "cw"
    ws_sft_epochs: int = 3
    ws_dpo_epochs: int = 2
    ws_lr: float = 2e-3
    ws_beta: float = 0.1
    ws_backbone: Any = None


@dataclass
class PretrainConfig:
    """A pretraining stage for a strong model built from scratch: causal-LM training on unlabelled text of the
    synthetic task (prompts with responses of every quality, :func:`cwpo.data.synthetic.pretraining_records`), so
    that SFT and preference optimisation start from a miniature pretrained LM rather than random weights. One
    pretrained model serves every seed, as one public checkpoint serves every run of a paper.

    Args:
        texts: number of prompt + response texts (drawn fresh from the generator; no labels).
        epochs: passes over them.
        lr: learning rate (full training).
        batch_size: texts per batch.
    """

    texts: int = 20000
    epochs: int = 1
    lr: float = 3e-3
    batch_size: int = 64


@dataclass
class StrongConfig:
    """The strong model: SFT on the chosen responses, then preference optimisation.

    Args:
        backbone: a :class:`cwpo.models.ModelSpec` value (paper: OPT-1.3B…13B, Qwen2.5-1.5B…14B).
        pretrain: a pretraining stage before SFT for a ``from_scratch`` backbone on the synthetic task
            (:class:`PretrainConfig`); ``None``: none (a pretrained backbone needs none; other data has no
            generator of unlabelled text).
        sft_lora: LoRA for SFT; ``None`` for full fine-tuning (a model trained from scratch needs it).
        merge_sft: with ``sft_lora``, also save the SFT model merged (``<sft>/adapter/merged``): the base the PO
            adapters name, so ``AutoPeftModelForCausalLM`` loads them in one step. ``false`` saves the disk (a 13B
            model: 26 GB per SFT stage) and leaves a two-step load (``cwpo export merge <sft>/adapter
            <sft>/adapter/merged`` first).
        po_lora: LoRA for preference optimisation (paper: r 8, α 16, dropout 0.05); ``None``: full fine-tuning
            (the embedded default: the sweep on the Human method, ``benchmarks/sweep_human.py``, found LoRA r 8
            on the tiny model either barely moving it or collapsing it).
        sft_epochs: SFT epochs (paper: 3).
        sft_lr: SFT learning rate.
        po_epochs: preference-optimisation epochs (paper: 5).
        po_lr: preference-optimisation learning rate.
        batch_size: pairs per batch.
        beta: DPO / rDPO β.
        tau: IPO τ.
        epsilon: rDPO's assumed flip rate ε.
        reference: ``adapter_disabled``, ``separate`` or ``precomputed`` (see :class:`PolicyModule`).
        warmup_steps: linear warm-up (paper: 100; capped at a tenth of a short run).
        online_max_new_tokens: online methods: tokens sampled per response during training.
        online_temperature: online methods: sampling temperature during training.
        online_batch_size: online methods: prompts per step (one sampled pair each).
        prefix_sharing: offline PO: one ``prompt + chosen + rejected`` row per pair, the prompt encoded once
            (:class:`cwpo.data.prefix_collate.PrefixPairCollator`); faster for long prompts.
        logps_impl: offline PO: ``logits`` or ``hidden`` (the LM head on response rows only), see
            :class:`cwpo.modules.policy.PolicyModule`.
    """

    backbone: Any = field(default_factory=_strong_backbone)
    pretrain: PretrainConfig | None = field(default_factory=PretrainConfig)
    sft_lora: LoraSpec | None = None
    merge_sft: bool = True
    po_lora: LoraSpec | None = None
    sft_epochs: int = 4
    sft_lr: float = 3e-3
    po_epochs: int = 3
    po_lr: float = 5e-4
    batch_size: int = 32
    beta: float = 0.3
    tau: float = 0.5
    epsilon: float = 0.1
    reference: str = "precomputed"
    warmup_steps: int = 10
    online_max_new_tokens: int = 24
    online_temperature: float = 1.0
    online_batch_size: int = 32
    prefix_sharing: bool = False
    logps_impl: str = "logits"


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


@dataclass
class ExperimentConfig:
    """One experiment: every stage of every method for every seed.

    Args:
        name: a title for the report.
        run_dir: where stages cache their artefacts and the report is written.
        seeds: one full run per seed (data split, initialisation, order, sampling).
        methods: names parsed by :func:`cwpo.pipeline.methods.parse_method`.
        data: the pairs.
        weak: the weak annotator.
        strong: the strong model.
        eval: generation and judge.
        trainer: extra ``lightning.Trainer`` arguments for every training stage (accelerator, devices,
            precision, strategy).
        precision: ``auto`` (bf16 autocast where the hardware runs bf16 fast and the model is at least 256 wide,
            else float32; resolved per model, see :mod:`cwpo.precision`), ``fp32`` or ``bf16``. A ``precision``
            in ``trainer`` overrides it.
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
    weak: WeakConfig = field(default_factory=WeakConfig)
    strong: StrongConfig = field(default_factory=StrongConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    trainer: dict[str, Any] = field(default_factory=dict)
    precision: str = "auto"
    logger: str = "csv"
    verbose: bool = False
    torch_threads: int | None = 1


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
    data, weak, strong, ev = config.data, config.weak, config.strong, config.eval
    need(0.0 < data.split_ratio < 1.0, "data.split_ratio", f"must be in (0, 1), got {data.split_ratio}")
    need(
        data.truncation in ("drop", "keep_end"), "data.truncation", f"must be drop or keep_end, got {data.truncation!r}"
    )
    need(data.max_length >= 8, "data.max_length", f"must be at least 8 tokens, got {data.max_length}")
    need(data.test_prompts is None or data.test_prompts >= 1, "data.test_prompts", f"must be >= 1 or null, got "
         f"{data.test_prompts}")  # fmt: skip
    rates = [("weak.lr", weak.lr), ("weak.ws_lr", weak.ws_lr), ("strong.sft_lr", strong.sft_lr),
             ("strong.po_lr", strong.po_lr)]  # fmt: skip
    epochs = [("weak.epochs", weak.epochs), ("weak.ws_dpo_epochs", weak.ws_dpo_epochs),
              ("strong.sft_epochs", strong.sft_epochs), ("strong.po_epochs", strong.po_epochs)]  # fmt: skip
    sizes = [("weak.batch_size", weak.batch_size), ("strong.batch_size", strong.batch_size),
             ("strong.online_batch_size", strong.online_batch_size), ("eval.batch_size", ev.batch_size),
             ("eval.max_new_tokens", ev.max_new_tokens), ("strong.online_max_new_tokens", strong.online_max_new_tokens)]  # fmt: skip
    if strong.pretrain is not None:
        rates.append(("strong.pretrain.lr", strong.pretrain.lr))
        epochs.append(("strong.pretrain.epochs", strong.pretrain.epochs))
        sizes += [("strong.pretrain.batch_size", strong.pretrain.batch_size), ("strong.pretrain.texts",
                  strong.pretrain.texts)]  # fmt: skip
    for name, value in rates:
        need(value > 0, name, f"a learning rate must be > 0, got {value}")
    for name, value in epochs:
        need(value >= 1, name, f"must be >= 1 epoch, got {value}")
    need(weak.ws_sft_epochs >= 0, "weak.ws_sft_epochs", f"must be >= 0 (0: no SFT), got {weak.ws_sft_epochs}")
    for name, value in sizes:
        need(value >= 1, name, f"must be >= 1, got {value}")
    need(strong.beta > 0, "strong.beta", f"DPO's beta must be > 0, got {strong.beta}")
    need(weak.ws_beta > 0, "weak.ws_beta", f"DPO's beta must be > 0, got {weak.ws_beta}")
    need(strong.tau > 0, "strong.tau", f"IPO's tau must be > 0, got {strong.tau}")
    need(0.0 <= strong.epsilon < 0.5, "strong.epsilon", f"rDPO's flip rate must be in [0, 0.5), got "
         f"{strong.epsilon} (at 0.5 its loss divides by 0)")  # fmt: skip
    need(strong.warmup_steps >= 0, "strong.warmup_steps", f"must be >= 0, got {strong.warmup_steps}")
    need(ev.temperature >= 0, "eval.temperature", f"must be >= 0 (0: greedy), got {ev.temperature}")
    need(0.0 < ev.top_p <= 1.0, "eval.top_p", f"must be in (0, 1], got {ev.top_p}")
    need(strong.online_temperature > 0, "strong.online_temperature", f"must be > 0, got {strong.online_temperature}")
    from cwpo.losses.confidence import CONFIDENCE_SCHEMES
    from cwpo.modules.reference import REFERENCE_MODES

    need(weak.confidence in CONFIDENCE_SCHEMES, "weak.confidence", f"must be one of {sorted(CONFIDENCE_SCHEMES)}, "
         f"got {weak.confidence!r}")  # fmt: skip
    need(strong.reference in REFERENCE_MODES, "strong.reference", f"must be one of {list(REFERENCE_MODES)}, got "
         f"{strong.reference!r}")  # fmt: skip
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
    if isinstance(config.trainer, dict) and config.trainer.get("logger", False) is not False:
        problems.append(f"trainer.logger: one logger shared by every stage; choose the kind with --logger "
                        f"({'|'.join(LOGGERS)}), each stage gets its own, or set trainer.logger: false")  # fmt: skip
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
        if config.strong.pretrain is not None and spec.name != "synthetic":
            try:
                from_scratch = as_model_spec(config.strong.backbone).from_scratch
            except (ConfigError, TypeError):
                from_scratch = False
            if from_scratch:
                problems.append(f"strong.pretrain: needs the synthetic dataset (its generator writes the unlabelled "
                                f"text), got {spec.name!r}; set strong.pretrain: null")  # fmt: skip
    specs = [("weak.backbone", config.weak.backbone), ("strong.backbone", config.strong.backbone)]
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
    readers = [("weak.backbone", config.weak.backbone), ("strong.backbone", config.strong.backbone)]
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
