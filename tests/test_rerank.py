"""Re-ranking (alpha-QE, k-reciprocal, DBA), query TTA and category fusion, on small synthetic sets."""
from __future__ import annotations

import numpy as np
import pytest

from shopsearch.classify.fusion import choose_weight, fused
from shopsearch.errors import ConfigError
from shopsearch.index.vector_index import VectorIndex
from shopsearch.rerank import (RerankingIndex, RerankOptions, alpha_qe, dba_vectors, k_reciprocal_distance,
                               parse_rerank, rerank)


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_parse_rerank():
    assert parse_rerank("off") == RerankOptions() and not parse_rerank(None).active
    qe = parse_rerank("qe")
    assert qe.qe == 5 and not qe.kreciprocal and qe.label == "qe"
    both = parse_rerank("qe=3+kr=10,depth=50")
    assert (both.qe, both.kreciprocal, both.k1, both.depth, both.label) == (3, True, 10, 50, "qe+kr")
    for bad in ("bogus", "qe=x", "kr=0", "depth=1", "lam=2"):
        with pytest.raises(ConfigError):
            parse_rerank(bad)


def test_alpha_qe_moves_the_query_towards_its_neighbours():
    q = _unit(np.array([1.0, 0.0, 0.0]))
    nb = _unit(np.array([[0.8, 0.6, 0.0], [0.7, 0.7, 0.1]]))
    new = alpha_qe(q, nb, nb @ q, alpha=3.0)
    assert np.isclose(np.linalg.norm(new), 1.0)
    assert (nb @ new).min() > (nb @ q).min()


def test_k_reciprocal_distance():
    """lam=1 is the original distance; lam=0 is the Jaccard distance of reciprocal neighbour
    sets: candidates of the query's own group share them, the other group's share none."""
    rng = np.random.default_rng(0)
    a, b = np.eye(8)[0], np.eye(8)[1]
    own = _unit(a + 0.15 * rng.normal(size=(6, 8)))
    other = _unit(b + 0.15 * rng.normal(size=(6, 8)))
    q = _unit(a + 0.15 * rng.normal(size=8))
    feats = np.vstack([q[None], other[:3], own, other[3:]])
    np.testing.assert_allclose(k_reciprocal_distance(feats, 4, 1, 1.0), 2 - 2 * feats[1:] @ q, atol=1e-5)
    jac = k_reciprocal_distance(feats, 4, 2, 0.0)
    own_d, other_d = jac[3:9], np.concatenate([jac[:3], jac[9:]])
    assert own_d.max() < 1.0 and np.allclose(other_d, 1.0)


def test_rerank_orders_and_reranking_index_keeps_the_tail():
    rng = np.random.default_rng(1)
    x = _unit(rng.normal(size=(300, 16)))
    index = VectorIndex(16, "flat", expected_size=300)
    index.add(np.arange(300, dtype=np.int64) + 1000, x)
    q = _unit(x[0] + 0.1 * rng.normal(size=16))
    scores, order = rerank(q, x[:20], x[:20] @ q, parse_rerank("qe+kr"))
    assert sorted(order.tolist()) == list(range(20)) and np.all(np.diff(scores[order]) <= 0)
    wrapped = RerankingIndex(index, parse_rerank("qe+kr=10,depth=50"))
    s, ids = wrapped.search(q[None], 120)
    assert ids.shape == (1, 120) and len(set(ids[0].tolist())) == 120 and np.all(np.diff(s[0]) <= 0)
    raw_s, raw_ids = index.search(q[None], 120)
    assert set(ids[0][:50].tolist()) == set(raw_ids[0][:50].tolist())  # re-ranked inside the top 50 only
    assert ids[0][50:].tolist() == raw_ids[0][50:].tolist()  # the tail keeps its order
    assert ids[0][0] == 1000  # the near-duplicate stays first


def test_dba_averages_each_vector_with_its_neighbours():
    x = _unit(np.array([[1.0, 0, 0], [0.9, 0.1, 0], [0, 0, 1.0]]))
    out = dba_vectors(x, n=1)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    assert out[0] @ x[1] > x[0] @ x[1]  # pulled towards its neighbour
    assert out[2] @ x[2] > 0.9


def test_fusion_weight_is_chosen_and_helps_on_noisy_retrieval():
    rng = np.random.default_rng(2)
    classes, dim = 6, 12
    centres = _unit(rng.normal(size=(classes, dim)))
    gy = np.repeat(np.arange(classes), 10)
    gallery = _unit(centres[gy] + 0.9 * rng.normal(size=(len(gy), dim)))
    qy = np.repeat(np.arange(classes), 8)
    queries = _unit(centres[qy] + 0.9 * rng.normal(size=(len(qy), dim)))
    probs = np.full((len(qy), classes), 0.2 / (classes - 1))
    probs[np.arange(len(qy)), qy] = 0.8  # a head that is right, with some doubt
    w, table = choose_weight(queries, qy, probs, gallery, gy)
    assert w > 0 and table[w] > table[0.0]
    assert fused(np.array([0.5, 0.6]), np.array([0.9, 0.01]), 0.1)[0] > fused(np.array([0.5, 0.6]),
                                                                              np.array([0.9, 0.01]), 0.1)[1]
