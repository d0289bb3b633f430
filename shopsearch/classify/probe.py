"""A cross-validated multinomial logistic-regression probe on frozen embeddings.

Standardised features, an L2 penalty chosen by stratified k-fold cross-validation on the
training vectors only, balanced class weights, full-batch L-BFGS (seconds on a CPU for a
few thousand vectors). No scikit-learn: torch is already here and this is all it takes.
The fitted probe folds into a linear CategoryHead, so serving code does not change."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("shopsearch.classify")

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)


@dataclass(frozen=True)
class Probe:
    """logits = weight @ ((x - mean) / scale) + bias, x a unit-norm embedding."""

    weight: np.ndarray  # (classes, dim)
    bias: np.ndarray  # (classes,)
    mean: np.ndarray  # (dim,)
    scale: np.ndarray  # (dim,)
    c: float  # the inverse regularisation strength chosen
    cv_accuracy: dict[float, float] = field(default_factory=dict)  # mean held-out accuracy per C

    def logits(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float32) - self.mean) / self.scale) @ self.weight.T + self.bias

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """(W, b) acting on the raw unit vector: the standardisation folded into the weights."""
        w = self.weight / self.scale
        return w.astype(np.float32), (self.bias - w @ self.mean).astype(np.float32)


def _balanced_weights(y: np.ndarray, n_classes: int) -> torch.Tensor:
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, len(y) / (max(1, (counts > 0).sum()) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def _fit(z: torch.Tensor, y: torch.Tensor, n_classes: int, c: float, class_w: torch.Tensor | None,
         max_iter: int, init: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise mean weighted cross-entropy + ||W||^2 / (2 C n) (scikit-learn's objective / (C n)),
    from `init` when given (the regularisation path: each C starts from the previous solution)."""
    w = (init[0].clone() if init else torch.zeros(n_classes, z.shape[1])).requires_grad_(True)
    b = (init[1].clone() if init else torch.zeros(n_classes)).requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-5,
                            tolerance_change=1e-7,
                            line_search_fn="strong_wolfe")
    sample_w = class_w[y] if class_w is not None else torch.ones(len(y))
    denom = float(sample_w.sum())
    penalty = 1.0 / (2.0 * c * len(y))

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (F.cross_entropy(z @ w.T + b, y, reduction="none") * sample_w).sum() / denom
        loss = loss + penalty * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Stratified fold number per sample (each class dealt round-robin after a shuffle)."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(y), dtype=np.int64)
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        fold[idx] = (np.arange(len(idx)) + rng.integers(k)) % k
    return fold


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(0)
    scale = x.std(0)
    return mean, np.where(scale > 1e-8, scale, 1.0)


def _group_folds(y: np.ndarray, groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Stratified folds dealt per group (a photo and its synthetic views), so no group is
    split between training and held-out samples."""
    ids, first = np.unique(groups, return_index=True)
    gfold = _folds(y[first], k, seed)
    return gfold[np.searchsorted(ids, groups)]


def fit_probe(x: np.ndarray, y: np.ndarray, n_classes: int, c_grid: tuple[float, ...] = C_GRID, folds: int = 3,
              balanced: bool = True, max_iter: int = 100, seed: int = 0, groups: np.ndarray | None = None,
              scored: np.ndarray | None = None) -> Probe:
    """Fit the probe; C by `folds`-fold cross-validated accuracy on (x, y) when there is
    more than one candidate and every class has at least `folds` samples (groups).
    `groups`: samples sharing a group (a photo and its synthetic views) stay in one fold;
    `scored`: the held-out samples the accuracy counts (the photos, not their views)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    torch.manual_seed(seed)
    cv: dict[float, float] = {}
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    scored = np.ones(len(y), bool) if scored is None else np.asarray(scored, bool)
    _, first = np.unique(groups, return_index=True)
    counts = np.bincount(y[first], minlength=n_classes)
    if len(c_grid) > 1 and counts[counts > 0].min() >= folds:
        fold = _group_folds(y, groups, folds, seed)
        accs: dict[float, list[float]] = {c: [] for c in c_grid}
        for f in range(folds):
            tr, te = fold != f, (fold == f) & scored
            mean, scale = _standardise(x[tr])
            zt, zv = torch.from_numpy((x[tr] - mean) / scale), torch.from_numpy((x[te] - mean) / scale)
            cw = _balanced_weights(y[tr], n_classes) if balanced else None
            init = None
            for c in sorted(c_grid):  # strongest regularisation first, each fit warm-starting the next
                init = _fit(zt, torch.from_numpy(y[tr]), n_classes, c, cw, max_iter, init)
                accs[c].append(float(((zv @ init[0].T + init[1]).argmax(1).numpy() == y[te]).mean()))
        cv = {c: float(np.mean(accs[c])) for c in c_grid}
        best = max(c_grid, key=lambda c: (cv[c], -c))  # ties: the stronger regularisation
    else:
        best = c_grid[len(c_grid) // 2]
    mean, scale = _standardise(x)
    w, b = _fit(torch.from_numpy((x - mean) / scale), torch.from_numpy(y), n_classes, best,
                _balanced_weights(y, n_classes) if balanced else None, max_iter)
    log.info("probe fitted", extra={"C": best, "cv_accuracy": cv, "classes": n_classes, "samples": len(y)})
    return Probe(w.numpy(), b.numpy(), mean.astype(np.float32), scale.astype(np.float32), best, cv)


def regularisation_path(x: np.ndarray, y: np.ndarray, n_classes: int, c_grid: tuple[float, ...] = C_GRID,
                        balanced: bool = True, max_iter: int = 100) -> list[Probe]:
    """One probe per C of `c_grid` (increasing), all fitted on (x, y), each fit warm-started from
    the previous one as the cross-validation walks its folds: what each C does to held-out data
    (validation photos) without cross-validating."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    mean, scale = _standardise(x)
    z, yt = torch.from_numpy((x - mean) / scale), torch.from_numpy(y)
    cw = _balanced_weights(y, n_classes) if balanced else None
    out: list[Probe] = []
    init = None
    for c in sorted(c_grid):
        init = _fit(z, yt, n_classes, c, cw, max_iter, init)
        out.append(Probe(init[0].numpy(), init[1].numpy(), mean.astype(np.float32), scale.astype(np.float32), c))
    return out


def head_from_probes(fine: Probe, coarse: Probe) -> "CategoryHead":
    """A linear CategoryHead computing exactly the two probes' logits. The head multiplies
    the unit vector by its scale s before the linear layers, hence the 1/s."""
    from shopsearch.classify.head import CategoryHead

    head = CategoryHead(fine.weight.shape[1], fine.weight.shape[0], coarse.weight.shape[0])
    s = float(head.log_scale.detach().exp())
    with torch.no_grad():
        for layer, probe in ((head.fine, fine), (head.coarse, coarse)):
            w, b = probe.folded()
            layer.weight.copy_(torch.from_numpy(w / s))
            layer.bias.copy_(torch.from_numpy(b))
    return head.eval()
