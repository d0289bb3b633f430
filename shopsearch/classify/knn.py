"""A nearest-neighbour vote over the labelled training vectors, mixed with the linear head.

The head draws one hyperplane per class; a product photographed from several sides or in
several packagings is several clusters, which the head blurs and the nearest labelled photos
do not. The vote is softmax-weighted over the `k` most similar training vectors (cosine,
temperature `temperature`), and the served probabilities are
(1 - weight) * head + weight * vote. k, temperature and weight are chosen on the validation
photos (weight 0, the head alone, is among the candidates, so the vote is only kept where it
helps there). It reads the same embedder vectors as the head: one (n_train x dim) product
per query, no second model."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

log = logging.getLogger("shopsearch.classify")

KS = (5, 10, 20)
TEMPERATURES = (0.02, 0.05, 0.1)
WEIGHTS = (0.0, 0.2, 0.35, 0.5, 0.65, 0.8)


@dataclass(frozen=True)
class KnnVote:
    """Labelled unit vectors and the vote's settings; `probs` gives (N, classes) probabilities."""

    vectors: np.ndarray = field(repr=False)  # (n, dim) float32, unit rows
    labels: np.ndarray = field(repr=False)  # (n,) fine class indices
    n_classes: int
    k: int
    temperature: float
    weight: float

    def probs(self, queries: np.ndarray) -> np.ndarray:
        """The vote's (N, n_classes) probabilities for unit query vectors."""
        q = np.atleast_2d(np.asarray(queries, np.float32))
        out = np.zeros((len(q), self.n_classes), np.float32)
        if not len(q) or not len(self.vectors):
            return out
        sims = q @ self.vectors.T
        k = min(self.k, sims.shape[1])
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        s = np.take_along_axis(sims, top, 1)
        w = np.exp((s - s.max(1, keepdims=True)) / self.temperature)
        np.add.at(out, (np.repeat(np.arange(len(q)), k), self.labels[top].ravel()), w.ravel())
        return out / out.sum(1, keepdims=True)

    def mix(self, fine: np.ndarray, coarse: np.ndarray, queries: np.ndarray, fine_to_coarse: Sequence[int]
            ) -> tuple[np.ndarray, np.ndarray]:
        """The head's (fine, coarse) probabilities mixed with the vote's, (1 - weight) * head +
        weight * vote at both levels (the vote's coarse mass: its fine mass summed per coarse class)."""
        if self.weight <= 0:
            return fine, coarse
        vote = self.probs(queries)
        vote_coarse = np.zeros_like(coarse, dtype=np.float32)
        np.add.at(vote_coarse.T, np.asarray(fine_to_coarse), vote.T)
        w = self.weight
        return (1.0 - w) * fine + w * vote, (1.0 - w) * coarse + w * vote_coarse

    def to_dict(self) -> dict[str, Any]:
        return {"vectors": torch.from_numpy(self.vectors.astype(np.float16)), "labels": torch.from_numpy(
            self.labels.astype(np.int64)), "n_classes": self.n_classes, "k": self.k,
            "temperature": self.temperature, "weight": self.weight}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "KnnVote":
        return cls(d["vectors"].float().numpy(), d["labels"].numpy().astype(np.int64), int(d["n_classes"]),
                   int(d["k"]), float(d["temperature"]), float(d["weight"]))

    def settings(self) -> dict[str, Any]:
        """The chosen settings, for metrics and people."""
        return {"k": self.k, "temperature": self.temperature, "weight": self.weight, "vectors": len(self.vectors)}


def choose_vote(val_vectors: np.ndarray, val_y: np.ndarray, head_probs: np.ndarray, train_vectors: np.ndarray,
                train_y: np.ndarray, n_classes: int, ks: Sequence[int] = KS,
                temperatures: Sequence[float] = TEMPERATURES, weights: Sequence[float] = WEIGHTS
                ) -> tuple[KnnVote, dict[str, float]]:
    """(the vote with the best validation top-1 of the mixture, top-1 per setting). Ties go
    to the smaller weight (closer to the head alone), then the smaller k and temperature."""
    gallery = np.asarray(train_vectors, np.float32)
    y = np.asarray(train_y, np.int64)
    table: dict[str, float] = {}
    best: tuple[float, float, int, float] | None = None
    for k in ks:
        for t in temperatures:
            vote = KnnVote(gallery, y, n_classes, k, t, 1.0).probs(val_vectors)
            for w in weights:
                acc = float((((1 - w) * head_probs + w * vote).argmax(1) == val_y).mean())
                table[f"k={k},t={t:g},w={w:g}"] = acc
                key = (acc, -w, -k, -t)
                if best is None or key > (best[0], -best[1], -best[2], -best[3]):
                    best = (acc, w, k, t)
    assert best is not None
    acc, w, k, t = best
    log.info("nearest-neighbour vote chosen", extra={"k": k, "temperature": t, "weight": w, "val_top1": acc})
    return KnnVote(gallery, y, n_classes, k, t, w), table
