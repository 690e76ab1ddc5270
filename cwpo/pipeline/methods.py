"""The methods a pipeline compares, by name: where their labels come from and how they are trained.

Names follow the paper's tables: ``human``, ``human-100``, ``ws-dpo``, ``cw-dpo``, ``cw-ipo``, ``cw-rdpo``,
plain ``dpo``/``ipo``/``rdpo`` on weak labels, ``top-N`` (hard filter keeping the N % most confident weak
labels, DPO), confidence-scheme variants ``cw-dpo@sigmoid`` (any scheme of
``cwpo.losses.confidence_from_margin``; also ``cw-ipo@rank`` etc.), and the online variants of appendix J.5,
``online-cw-dpo`` and ``online-dpo`` (also ``-ipo``/``-rdpo``): the policy samples two answers per D_U prompt at
every step and the weak annotator orders them (with its confidence as the weight, or c = 1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from cwpo.errors import ConfigError

Labels = Literal["human", "human_all", "weak", "ws"]


@dataclass(frozen=True)
class MethodSpec:
    """How one method trains the strong model.

    Args:
        name: the name it was parsed from.
        labels: which labels order D_U: ``human`` (D_U's human labels), ``human_all`` (D_L and D_U with human
            labels), ``weak`` (the BT annotator), ``ws`` (the weak model's implicit DPO reward, WS-DPO).
        objective: ``dpo``, ``ipo`` or ``rdpo`` (the losses registry).
        weighting: ``uniform`` (c = 1), ``confidence`` (c from the annotator) or ``top_n`` (0/1 filter).
        scheme: confidence scheme applied to the annotator's margins when ``weighting == "confidence"``.
        top_n_fraction: kept fraction for ``top_n``.
        online: pairs are sampled from the policy during training and labelled by the annotator (D_U's prompts
            only); ``labels`` is then ``weak`` and names the SFT data.
    """

    name: str
    labels: Labels
    objective: str = "dpo"
    weighting: Literal["uniform", "confidence", "top_n"] = "uniform"
    scheme: str = "cw"
    top_n_fraction: float = 1.0
    online: bool = False

    @property
    def label_source(self) -> str:
        """The label set this method's SFT and reference depend on (methods sharing it share the SFT stage)."""
        return self.labels


_OBJECTIVES = ("dpo", "ipo", "rdpo")
_ONLINE_SCHEMES = ("cw", "sigmoid", "margin", "uniform")  # cwpo.modules.online.BATCH_LOCAL_SCHEMES


def parse_method(name: str) -> MethodSpec:
    """Turn a method name into its :class:`MethodSpec`; unknown names get a ConfigError listing the forms."""
    lowered = name.strip().lower()
    if lowered == "human":
        return MethodSpec(name, "human")
    if lowered == "human-100":
        return MethodSpec(name, "human_all")
    if lowered == "ws-dpo":
        return MethodSpec(name, "ws")
    if lowered in _OBJECTIVES:
        return MethodSpec(name, "weak", objective=lowered)
    match = re.fullmatch(r"online-(cw-)?(dpo|ipo|rdpo)(?:@(\w+))?", lowered)
    if match:
        if match[3] and not match[1]:
            raise ConfigError(f"method {name!r}: a confidence scheme (@...) needs online-cw-<objective>")
        if match[3] and match[3] not in _ONLINE_SCHEMES:
            raise ConfigError(f"method {name!r}: online confidence schemes are {_ONLINE_SCHEMES} (one pair at a time)")
        weighting = "confidence" if match[1] else "uniform"
        return MethodSpec(name, "weak", objective=match[2], weighting=weighting, scheme=match[3] or "cw", online=True)
    match = re.fullmatch(r"cw-(dpo|ipo|rdpo)(?:@(\w+))?", lowered)
    if match:
        return MethodSpec(name, "weak", objective=match[1], weighting="confidence", scheme=match[2] or "cw")
    match = re.fullmatch(r"top-(\d+(?:\.\d+)?)(?:-(dpo|ipo|rdpo))?", lowered)
    if match:
        fraction = float(match[1]) / 100
        if not 0 < fraction <= 1:
            raise ConfigError(f"method {name!r}: top-N needs 0 < N <= 100")
        return MethodSpec(name, "weak", objective=match[2] or "dpo", weighting="top_n", top_n_fraction=fraction)
    raise ConfigError(
        f"unknown method {name!r}; use human, human-100, ws-dpo, dpo, ipo, rdpo, cw-dpo, cw-ipo, cw-rdpo, "
        "cw-<objective>@<scheme> (scheme: cw, sigmoid, margin, uniform, rank), top-N[-objective], "
        "online-cw-<objective> or online-<objective>"
    )
