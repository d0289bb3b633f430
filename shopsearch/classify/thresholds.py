"""Routing thresholds, chosen on validation data: filter to the top category when its
probability makes top-1 at least `target` precise, to the top two when their summed
probability makes top-2 that precise, else search everything."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: thresholds above 1 never fire
NEVER = 1.01
#: fewest validation samples a threshold may rest on
MIN_SUPPORT = 5


@dataclass(frozen=True)
class RoutingThresholds:
    filter: float = NEVER  # p(top1) >= filter -> restrict to the top category
    top2: float = NEVER  # else p(top1)+p(top2) >= top2 -> restrict to the top two
    target: float = 0.97  # precision the thresholds were chosen for
    val_samples: int = 0
    val_filter_rate: float = 0.0  # share of validation queries that would be filtered
    val_top2_rate: float = 0.0
    fusion: float = 0.0  # weight of log p(category) added to similarities when fusing (0 = not chosen)

    @property
    def reachable(self) -> bool:
        """False when no threshold reaches the target on validation (routing never filters)."""
        return self.filter < NEVER or self.top2 < NEVER

    def decide(self, p1: float, p12: float) -> str:
        """'filter', 'top2' or 'all' for a query with these top probabilities."""
        if p1 >= self.filter:
            return "filter"
        if p12 >= self.top2:
            return "top2"
        return "all"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RoutingThresholds":
        return cls(**{k: type(getattr(cls(), k))(v) for k, v in d.items() if k in cls.__dataclass_fields__})


def _min_threshold(scores: np.ndarray, correct: np.ndarray, target: float) -> float:
    """Smallest t with precision(correct | score >= t) >= target on >= MIN_SUPPORT samples."""
    order = np.argsort(-scores, kind="stable")
    s, c = scores[order], correct[order].astype(np.float64)
    precision = np.cumsum(c) / np.arange(1, len(c) + 1)
    best = NEVER
    for i in range(MIN_SUPPORT - 1, len(s)):
        # only cut between distinct scores, so the threshold means what it says
        if (i + 1 == len(s) or s[i + 1] < s[i]) and precision[i] >= target:
            best = float(s[i])
    return best


def choose_thresholds(probs: np.ndarray, y_true: np.ndarray, target: float = 0.97) -> RoutingThresholds:
    """Thresholds from validation class probabilities (N, C) and true class indices (N,)."""
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true)
    if len(probs) == 0:
        return RoutingThresholds(target=target)
    top = np.argsort(-probs, axis=1)[:, :2]
    p1 = probs[np.arange(len(probs)), top[:, 0]]
    p12 = p1 + probs[np.arange(len(probs)), top[:, 1]]
    t_filter = _min_threshold(p1, top[:, 0] == y_true, target)
    rest = p1 < t_filter
    in_top2 = (top[:, 0] == y_true) | (top[:, 1] == y_true)
    t_top2 = _min_threshold(p12[rest], in_top2[rest], target) if rest.sum() >= MIN_SUPPORT else NEVER
    th = RoutingThresholds(t_filter, t_top2, target, int(len(probs)))
    decisions = [th.decide(a, b) for a, b in zip(p1, p12)]
    return RoutingThresholds(t_filter, t_top2, target, int(len(probs)),
                             decisions.count("filter") / len(decisions), decisions.count("top2") / len(decisions))
