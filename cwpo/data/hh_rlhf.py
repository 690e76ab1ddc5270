"""Anthropic HH-RLHF (``Anthropic/hh-rlhf``): harmless-base, the helpful configs, and their combination.

Each raw row is ``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}``: two full
dialogues that share every turn but the last assistant reply. The prompt is the dialogue up to and including
the last ``"\\n\\nAssistant:"``; the responses are what follows it (they keep their leading space, so that
``prompt + chosen`` is exactly the original text). Pairs whose two dialogues do not split to the same prompt
are dropped and counted as ``no_shared_prompt``.

"HH-RLHF" in the paper is harmless-base + helpful-base (``subset="hh-rlhf"``).
"""

from __future__ import annotations

import os
import re
from typing import Any

from cwpo.data._common import collect_pairs, field, local_or_hub_rows
from cwpo.data.report import FilterReport
from cwpo.errors import ConfigError

HUB_NAME = "Anthropic/hh-rlhf"
ASSISTANT = "\n\nAssistant:"
HUMAN = "\n\nHuman:"
SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")
COMBINATIONS = {
    "hh-rlhf": ("harmless-base", "helpful-base"),
    "helpful": ("helpful-base", "helpful-online", "helpful-rejection-sampled"),
}
SPLITS = ("train", "test")

_TURN = re.compile(r"\n\n(Human|Assistant):")


def split_dialogue(text: str) -> tuple[str, str] | None:
    """Split an HH-RLHF dialogue into (prompt up to and including the last ``\\n\\nAssistant:``, reply)."""
    cut = text.rfind(ASSISTANT)
    if cut < 0:
        return None
    cut += len(ASSISTANT)
    return text[:cut], text[cut:]


def dialogue_to_messages(prompt: str) -> list[dict[str, str]]:
    """An HH-RLHF prompt as chat messages (``Human`` -> user, ``Assistant`` -> assistant).

    The trailing empty ``Assistant:`` turn (the one to be answered) is dropped; text before the first turn
    marker, if any, is kept as a leading user message.
    """
    messages: list[dict[str, str]] = []
    parts = _TURN.split(prompt)
    if parts[0].strip():
        messages.append({"role": "user", "content": parts[0].strip()})
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        messages.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return messages


def parse_pair(raw: dict[str, Any], *, as_messages: bool = False) -> dict[str, Any] | str:
    """One raw HH-RLHF row as a schema record (without id), or the drop reason.

    Raises:
        DataError: ``chosen``/``rejected`` missing or not text (the caller adds file and row).
    """
    chosen, rejected = split_dialogue(field(raw, "chosen", str)), split_dialogue(field(raw, "rejected", str))
    if chosen is None or rejected is None or chosen[0] != rejected[0]:
        return "no_shared_prompt"
    prompt, chosen_reply, rejected_reply = chosen[0], chosen[1], rejected[1]
    if as_messages:
        return {
            "prompt": dialogue_to_messages(prompt),
            "chosen": chosen_reply.strip(),
            "rejected": rejected_reply.strip(),
        }
    return {"prompt": prompt, "chosen": chosen_reply, "rejected": rejected_reply}


def load_hh_rlhf(
    subset: str = "harmless-base",
    split: str = "train",
    *,
    path: str | os.PathLike | None = None,
    as_messages: bool = False,
    strict: bool = False,
    limit: int | None = None,
):
    """Load HH-RLHF pairs from the hub or from local files.

    Args:
        subset: one of ``harmless-base``, ``helpful-base``, ``helpful-online``, ``helpful-rejection-sampled``,
            or a combination: ``hh-rlhf`` (harmless-base + helpful-base, the paper's "HH-RLHF") or ``helpful``.
        split: ``train`` or ``test``.
        path: a local ``.jsonl(.gz)`` file in the original format, or a folder holding
            ``<subset>/<split>.jsonl.gz`` (the hub's layout) or ``<subset>-<split>.jsonl.gz``.
            ``None`` loads from the hub (``datasets.load_dataset("Anthropic/hh-rlhf", data_dir=subset)``).
        as_messages: give the prompt as chat messages (for chat-template models); responses are then
            stripped of surrounding whitespace.
        strict: raise :class:`DataError` on pairs that would be dropped and counted.
        limit: read at most this many rows per subset.

    Returns:
        A :class:`datasets.Dataset` with ``id`` (``hh-rlhf-<subset>-<split>-<row>``), ``prompt``, ``chosen``,
        ``rejected``, ``human_label`` (= 1) and ``source`` (the subset), its :class:`FilterReport` attached.
    """
    if split not in SPLITS:
        raise ConfigError(f"HH-RLHF split must be one of {SPLITS}, got {split!r}")
    if subset in COMBINATIONS:
        import datasets

        parts = [
            load_hh_rlhf(name, split, path=path, as_messages=as_messages, strict=strict, limit=limit)
            for name in COMBINATIONS[subset]
        ]
        report = FilterReport.from_dataset(parts[0])
        for part in parts[1:]:
            report = report.combine(FilterReport.from_dataset(part))
        report.stage = f"hh-rlhf {subset} {split}"
        combined = datasets.concatenate_datasets(parts)
        report.log()
        return report.attach(combined)
    if subset not in SUBSETS:
        raise ConfigError(f"HH-RLHF subset must be one of {SUBSETS + tuple(COMBINATIONS)}, got {subset!r}")

    # the hub's layout (<subset>/<split>.jsonl.gz), or flat files named <subset>-<split>.jsonl.gz
    patterns = [f"{subset}/{{split}}.jsonl.gz", f"{subset}/{{split}}.jsonl"]
    patterns += [f"{subset}-{{split}}.jsonl.gz", f"{subset}-{{split}}.jsonl"]
    rows, where = local_or_hub_rows(path, split, patterns, HUB_NAME, data_dir=subset)
    return collect_pairs(
        rows,
        lambda raw: parse_pair(raw, as_messages=as_messages),
        stage=f"hh-rlhf {subset} {split}",
        where=where,
        id_prefix=f"hh-rlhf-{subset}-{split}",
        strict=strict,
        limit=limit,
        extra={"human_label": 1, "source": subset},
    )
