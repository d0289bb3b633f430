"""The cross-validated logistic-regression probe and the head it folds into."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from shopsearch.classify.head import combined_probs
from shopsearch.classify.probe import fit_probe, head_from_probes, regularisation_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny fits (tests/conftest.py)


def _blobs(n_per: int, classes: int, dim: int, noise: float, seed: int, skew: bool = False, draw: int = 0):
    centres = np.random.default_rng(seed).normal(size=(classes, dim))
    rng = np.random.default_rng(1000 + 10 * seed + draw)
    counts = [n_per * (4 if skew and c == 0 else 1) for c in range(classes)]
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    x = centres[y] + noise * rng.normal(size=(len(y), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), y


def test_probe_learns_and_cv_picks_a_c():
    x, y = _blobs(30, 5, 16, 0.8, 0)
    xt, yt = _blobs(30, 5, 16, 0.8, 0, draw=1)  # same classes, fresh samples
    probe = fit_probe(x, y, 5, c_grid=(0.001, 0.1, 1.0), folds=3)
    assert set(probe.cv_accuracy) == {0.001, 0.1, 1.0}
    assert probe.c == max(probe.cv_accuracy, key=lambda c: (probe.cv_accuracy[c], -c))
    assert (probe.logits(xt).argmax(1) == yt).mean() > 0.8


def test_balanced_weights_help_the_small_classes():
    x, y = _blobs(10, 4, 8, 2.5, 1, skew=True)
    bal = fit_probe(x, y, 4, c_grid=(1.0,), balanced=True)
    raw = fit_probe(x, y, 4, c_grid=(1.0,), balanced=False)
    # class 0 has 4x the samples: the unbalanced probe predicts it more often
    assert (raw.logits(x).argmax(1) == 0).sum() >= (bal.logits(x).argmax(1) == 0).sum()


def test_folded_head_computes_the_probe_logits():
    x, y = _blobs(12, 3, 10, 1.0, 2)
    fine = fit_probe(x, y, 3, c_grid=(1.0,))
    coarse = fit_probe(x, (y > 0).astype(int), 2, c_grid=(1.0,))
    head = head_from_probes(fine, coarse)
    with torch.no_grad():
        lf, lc = head(torch.from_numpy(x * 3.0))  # the head normalises its input itself
    np.testing.assert_allclose(lf.numpy(), fine.logits(x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lc.numpy(), coarse.logits(x), rtol=1e-4, atol=1e-4)
    pf, _ = combined_probs(lf, lc, torch.tensor([0, 1, 1]))
    assert pf.shape == (len(x), 3)


def test_tiny_classes_skip_cross_validation():
    x, y = _blobs(2, 3, 6, 0.5, 3)
    probe = fit_probe(x, y, 3, c_grid=(0.1, 1.0, 10.0), folds=3)
    assert probe.cv_accuracy == {} and probe.c == 1.0


def test_regularisation_path_walks_c_upwards_from_one_fit():
    x, y = _blobs(20, 4, 12, 1.0, 4)
    path = regularisation_path(x, y, 4, c_grid=(1.0, 0.01, 0.1))
    assert [p.c for p in path] == [0.01, 0.1, 1.0]
    norms = [float(np.linalg.norm(p.weight)) for p in path]
    assert norms[0] < norms[1] < norms[2]  # a weaker penalty lets the weights grow
    # its first point is the probe fit_probe makes at that C (same objective, same start)
    single = fit_probe(x, y, 4, c_grid=(0.01,))
    np.testing.assert_allclose(path[0].logits(x), single.logits(x), rtol=1e-3, atol=1e-3)
