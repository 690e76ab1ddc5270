"""Pure tensor maths of CW-PO: per-pair losses, confidence weights, reductions and response log-probs.

Every loss takes tensors and returns one value per pair, shape (b,); the caller weights and reduces with
``weighted_loss`` (Eq. 7 of CW-PO). Importing this package imports torch and nothing heavier.
"""

from cwpo.losses.bt import bt_loss
from cwpo.losses.confidence import CONFIDENCE_SCHEMES, confidence_from_margin, top_n_weights
from cwpo.losses.dpo import dpo_loss, ipo_loss, rdpo_loss
from cwpo.losses.logps import response_logps_from_hidden, sequence_logps
from cwpo.losses.pairrm import pairrm_loss, pairrm_score
from cwpo.losses.registry import OBJECTIVES, Objective, get_objective
from cwpo.losses.weighting import REDUCTIONS, weighted_loss

__all__ = [
    "CONFIDENCE_SCHEMES",
    "OBJECTIVES",
    "REDUCTIONS",
    "Objective",
    "bt_loss",
    "confidence_from_margin",
    "dpo_loss",
    "get_objective",
    "ipo_loss",
    "pairrm_loss",
    "pairrm_score",
    "rdpo_loss",
    "response_logps_from_hidden",
    "sequence_logps",
    "top_n_weights",
    "weighted_loss",
]
