"""The experiment config of ``cwpo run``: one YAML names the data, the weak and strong models, the methods and
the seeds. With no YAML, every field's default gives the embedded default: the synthetic task, a tiny weak annotator and a
tiny strong model pretrained on unlabelled task text, Human / Human-100 / WS-DPO / DPO (c = 1) / CW-DPO / CW-IPO /
CW-rDPO / top-30 %, five seeds, 500 test prompts; PO settings chosen on the Human method alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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

    def __post_init__(self) -> None:
        if self.truncation not in ("drop", "keep_end"):
            raise ConfigError(f"data.truncation must be 'drop' or 'keep_end', got {self.truncation!r}")
        if not 0.0 < self.split_ratio < 1.0:
            raise ConfigError(f"data.split_ratio must be in (0, 1), got {self.split_ratio}")


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
    torch_threads: int | None = 1

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ConfigError("seeds must name at least one seed")
        if not self.methods:
            raise ConfigError("methods must name at least one method")
        for name in self.methods:
            parse_method(name)  # ConfigError naming the valid forms
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
