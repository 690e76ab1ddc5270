"""Counted drops: :class:`FilterReport` says how many rows each filter removed, and why.

Every stage that drops rows (a loader, the tokeniser's length filter) records the drop here instead of
failing, and the report travels with the data: it is stored in the dataset's ``info.description`` (which
``select``/``map``/``filter`` copy), logged once per stage, and written next to a saved file as
``<file>.report.json``. With ``strict=True`` every drop becomes a :class:`cwpo.errors.DataError` instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from cwpo.errors import DataError

logger = logging.getLogger(__name__)

_INFO_KEY = "cwpo_filter_report"
_MAX_EXAMPLES = 5

# Reasons a row can be dropped, and what they mean (the keys of ``FilterReport.dropped``).
DROP_REASONS = {
    "empty_prompt": "the prompt is empty or only whitespace",
    "empty_response": "chosen or rejected is empty or only whitespace",
    "identical_responses": "chosen and rejected are the same text",
    "no_shared_prompt": "chosen and rejected do not continue the same dialogue (HH-RLHF format)",
    "over_budget": "prompt + longer response is over the token budget (the paper's length filter)",
    "response_truncated_to_zero": "truncating to the token budget would leave a response with no tokens",
    "tie": "the source marks the two responses as equally good",
    "filtered_out": "removed by a loader option (domain, score ratio, ...)",
    "duplicate": "the same prompt, chosen and rejected as an earlier row",
}


@dataclass
class FilterReport:
    """How many rows a stage read, kept and dropped (by reason).

    Args:
        stage: what produced the report (``"hh-rlhf harmless-base test"``, ``"tokenize"``).
        n_read: rows seen.
        n_kept: rows kept.
        dropped: counts by reason (see ``DROP_REASONS``).
        notes: counts of rows kept but changed (``truncated``, ``boundary_fallback``), not drops.
        examples: up to five ``row``/``id`` strings per reason, to find dropped rows again.
        strict: raise :class:`DataError` on the first drop instead of counting it.
    """

    stage: str = ""
    n_read: int = 0
    n_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    strict: bool = False

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def drop(self, reason: str, *, path: str | None = None, row: int | None = None, record_id: str | None = None):
        """Count one dropped row (or raise, when ``strict``)."""
        if self.strict:
            raise DataError(f"{reason}: {DROP_REASONS.get(reason, reason)}", path=path, row=row, record_id=record_id)
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        where = record_id if record_id is not None else (f"row {row}" if row is not None else None)
        if where is not None:
            examples = self.examples.setdefault(reason, [])
            if len(examples) < _MAX_EXAMPLES:
                examples.append(str(where))

    def note(self, what: str, count: int = 1) -> None:
        """Count rows that were kept but changed."""
        if count:
            self.notes[what] = self.notes.get(what, 0) + count

    def merge(self, other: FilterReport) -> FilterReport:
        """A report covering this stage followed by ``other`` (drops and notes added up)."""
        merged = FilterReport(
            stage=" + ".join(s for s in (self.stage, other.stage) if s),
            n_read=self.n_read,
            n_kept=other.n_kept,
            dropped=dict(self.dropped),
            notes=dict(self.notes),
            examples={k: list(v) for k, v in self.examples.items()},
            strict=self.strict or other.strict,
        )
        for reason, count in other.dropped.items():
            merged.dropped[reason] = merged.dropped.get(reason, 0) + count
        for what, count in other.notes.items():
            merged.notes[what] = merged.notes.get(what, 0) + count
        for reason, examples in other.examples.items():
            merged.examples[reason] = (merged.examples.get(reason, []) + examples)[:_MAX_EXAMPLES]
        return merged

    def combine(self, other: FilterReport) -> FilterReport:
        """A report covering two sources read side by side (reads, keeps, drops added up)."""
        combined = self.merge(other)
        combined.stage = " | ".join(s for s in (self.stage, other.stage) if s)
        combined.n_read = self.n_read + other.n_read
        combined.n_kept = self.n_kept + other.n_kept
        return combined

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("strict")
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FilterReport:
        fields = {k: data[k] for k in ("stage", "n_read", "n_kept", "dropped", "notes", "examples") if k in data}
        return cls(**fields)

    def summary(self) -> str:
        """One line for logs: ``stage: kept 2,311 of 2,312 (dropped: no_shared_prompt 1)``."""
        drops = ", ".join(f"{k} {v:,}" for k, v in sorted(self.dropped.items())) or "none"
        text = f"{self.stage}: kept {self.n_kept:,} of {self.n_read:,} (dropped: {drops})"
        if self.notes:
            text += " (changed: " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.notes.items())) + ")"
        return text

    def log(self) -> None:
        logger.info(self.summary())

    def attach(self, dataset):
        """Store this report in ``dataset.info`` (in place) and return the dataset."""
        dataset.info.description = json.dumps({_INFO_KEY: self.to_dict()})
        return dataset

    @classmethod
    def from_dataset(cls, dataset) -> FilterReport | None:
        """The report stored in ``dataset.info`` by :meth:`attach`, if any."""
        text = getattr(dataset.info, "description", None) or ""
        try:
            data = json.loads(text)
        except (TypeError, ValueError):
            return None
        if isinstance(data, dict) and _INFO_KEY in data:
            return cls.from_dict(data[_INFO_KEY])
        return None


def get_filter_report(dataset) -> FilterReport:
    """The :class:`FilterReport` attached to ``dataset`` (an empty one when none was)."""
    return FilterReport.from_dataset(dataset) or FilterReport(n_read=len(dataset), n_kept=len(dataset))


@contextlib.contextmanager
def quiet_reports() -> Iterator[None]:
    """No drop-count lines from cwpo's loaders inside the block: for a second look at data a stage reports itself."""
    data_log = logging.getLogger("cwpo.data")
    level = data_log.level
    data_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        data_log.setLevel(level)
