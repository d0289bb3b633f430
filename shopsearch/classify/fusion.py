"""Fusing the category head with retrieval: a candidate's score becomes
similarity + w * log p(its category | query), a log-linear mixture whose weight w is
chosen on validation queries (never on test). w = 0 is plain retrieval; a large w ranks
by the head first and by similarity within a category. Unlike the hard routing filter,
nothing is hidden: a confident wrong prediction only lowers the other categories."""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

log = logging.getLogger("shopsearch.classify")

#: probabilities are floored here so one category cannot be ruled out entirely
P_FLOOR = 1e-4
WEIGHTS = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5)


def log_prob(p: np.ndarray | float) -> np.ndarray:
    return np.log(np.maximum(p, P_FLOOR))


def fused(sims: np.ndarray, cand_probs: np.ndarray, weight: float) -> np.ndarray:
    """Scores of candidates with similarities `sims` whose categories have probabilities `cand_probs`."""
    return np.asarray(sims, np.float32) + weight * log_prob(cand_probs).astype(np.float32)


def choose_weight(query_vecs: np.ndarray, query_y: np.ndarray, query_probs: np.ndarray, gallery_vecs: np.ndarray,
                  gallery_y: np.ndarray, weights: Sequence[float] = WEIGHTS, depth: int = 100
                  ) -> tuple[float, dict[float, float]]:
    """(w, category precision@1 per w) on validation queries against a labelled gallery;
    ties go to the smaller weight (closer to plain retrieval)."""
    if len(query_vecs) == 0 or len(gallery_vecs) == 0:
        return 0.0, {}
    sims = np.asarray(query_vecs, np.float32) @ np.asarray(gallery_vecs, np.float32).T
    depth = min(depth, sims.shape[1])
    top = np.argpartition(-sims, depth - 1, axis=1)[:, :depth]
    top_sims = np.take_along_axis(sims, top, 1)
    cand_y = np.asarray(gallery_y)[top]
    cand_p = np.take_along_axis(np.asarray(query_probs), cand_y, 1)
    table = {}
    for w in weights:
        best = np.argmax(fused(top_sims, cand_p, w), axis=1)
        table[float(w)] = float((cand_y[np.arange(len(top)), best] == np.asarray(query_y)).mean())
    chosen = max(table, key=lambda w: (table[w], -w))
    log.info("fusion weight chosen", extra={"weight": chosen, "precision_at_1": table})
    return chosen, table
