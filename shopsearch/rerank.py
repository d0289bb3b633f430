"""Query-time re-ranking of a vector index's top candidates, without training:
alpha-weighted query expansion (alpha-QE) and k-reciprocal re-ranking (Zhong et al. 2017)
computed on the top `depth` candidates only, so the cost does not grow with the index.

A `RerankingIndex` wraps a VectorIndex for one query set-up: `search` returns the
re-ranked top of the list, then the rest of the original ranking, so callers that page
deeper (product grouping, filters) still see every candidate. Database-side augmentation
(DBA) changes the stored vectors and is applied when a gallery is built (`dba_vectors`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shopsearch.errors import ConfigError

PRESETS = ("off", "qe", "kr", "qe+kr")


#: the settings a re-ranking accepts, as `rerank=` names them: (lowest, highest) of each. The
#: k-reciprocal step holds depth x depth matrices and a depth x k2 x depth block (500 x 20 x 500
#: float32: 20 MB), so one query's re-ranking stays within tens of megabytes and milliseconds;
#: the defaults and every spec the README and the benchmark configs use (qe=5, kr=20, k2=6,
#: depth 100 to 300) lie well inside them.
LIMITS: dict[str, tuple[float, float]] = {"qe": (0, 50), "kr": (1, 50), "k2": (1, 20), "depth": (2, 500),
                                          "alpha": (0, 20), "lam": (0, 1)}
_WHOLE = ("qe", "kr", "k2", "depth")


def _check(name: str, value: float, shown: str | None = None) -> None:
    """ConfigError naming the allowed range when `value` is outside LIMITS[name] (or not finite)."""
    lo, hi = LIMITS[name]
    whole = name in _WHOLE
    if not lo <= value <= hi or (whole and not float(value).is_integer()):  # NaN fails too
        kind = "a whole number" if whole else "a number"
        raise ConfigError(f"rerank: {name} must be {kind} from {lo:g} to {hi:g}, not {shown or f'{value:g}'}")


@dataclass(frozen=True)
class RerankOptions:
    qe: int = 0  # alpha-QE: this many top neighbours averaged into the query (0 = off)
    alpha: float = 3.0  # alpha-QE weight: similarity ** alpha
    kreciprocal: bool = False
    k1: int = 20
    k2: int = 6
    lam: float = 0.3  # weight of the original distance in the final k-reciprocal distance
    depth: int = 200  # candidates re-ranked

    def __post_init__(self) -> None:
        # every re-ranking obeys LIMITS, whether a query's `rerank=` or a build's settings made it
        for name, value in (("qe", self.qe), ("alpha", self.alpha), ("kr", self.k1), ("k2", self.k2),
                            ("lam", self.lam), ("depth", self.depth)):
            _check(name, value)

    @property
    def active(self) -> bool:
        return self.qe > 0 or self.kreciprocal

    @property
    def spec(self) -> str:
        """Every setting that changes the scores, `off` when inactive (parse_rerank reads it back)."""
        parts = ([f"qe={self.qe},alpha={self.alpha:g}"] if self.qe else []) + \
            ([f"kr={self.k1},k2={self.k2},lam={self.lam:g}"] if self.kreciprocal else [])
        return ",".join(parts + [f"depth={self.depth}"]) if parts else "off"

    @property
    def label(self) -> str:
        parts = (["qe"] if self.qe else []) + (["kr"] if self.kreciprocal else [])
        return "+".join(parts) or "off"


def parse_rerank(text: str | None) -> RerankOptions:
    """'off' | 'qe' | 'kr' | 'qe+kr', optionally with settings: 'qe=5,alpha=3,kr=20,depth=300'.
    A setting outside LIMITS is a ConfigError naming its allowed range (the API's 400)."""
    text = (text or "off").strip().lower()
    if text in ("", "off", "none", "false", "0"):
        return RerankOptions()
    vals: dict[str, float] = {}
    for part in text.replace("+", ",").split(","):
        key, _, value = part.strip().partition("=")
        if key not in LIMITS:
            raise ConfigError(f"rerank: unknown part {key!r}; use off, qe, kr, qe+kr (optionally qe=N, kr=K1, "
                              "alpha=A, k2=N, lam=L, depth=N)")
        try:
            vals[key] = float(value) if value else {"qe": 5.0, "kr": 20.0}.get(key, 0.0)
        except ValueError:
            raise ConfigError(f"rerank: {key} must be a number, got {value[:40]!r}") from None
        _check(key, vals[key], value[:40] or "empty")
    return RerankOptions(qe=int(vals.get("qe", 0)), alpha=vals.get("alpha", 3.0), kreciprocal="kr" in vals,
                         k1=int(vals.get("kr", 20)), k2=int(vals.get("k2", 6)), lam=vals.get("lam", 0.3),
                         depth=int(vals.get("depth", 200)))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def alpha_qe(query: np.ndarray, neighbours: np.ndarray, sims: np.ndarray, alpha: float) -> np.ndarray:
    """The query plus its neighbours weighted by similarity ** alpha, re-normalised."""
    w = np.clip(sims, 0, None) ** alpha
    return _unit(query + (w[:, None] * neighbours).sum(0))


def dba_vectors(vectors: np.ndarray, n: int = 3, alpha: float = 3.0, block: int = 4096) -> np.ndarray:
    """Database-side augmentation: each vector replaced by alpha-QE over its n nearest
    neighbours in the set (itself included). Exact, in blocks; for a gallery build."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    out = np.empty_like(x)
    for start in range(0, len(x), block):
        sims, ids = index.search(x[start:start + block], n + 1)
        w = np.clip(sims, 0, None) ** alpha
        w[ids < 0] = 0
        out[start:start + block] = _unit(np.einsum("bn,bnd->bd", w, x[np.maximum(ids, 0)]))
    return out


def k_reciprocal_distance(feats: np.ndarray, k1: int, k2: int, lam: float) -> np.ndarray:
    """Re-ranked distance of row 0 (the query) to rows 1.. (its candidates), computed
    inside this local set: Jaccard distance of k-reciprocal neighbour sets blended with the
    original distance."""
    n = len(feats)
    k1 = min(k1, n - 1)
    k2 = max(1, min(k2, n))
    dist = np.clip(2.0 - 2.0 * feats @ feats.T, 0, None)
    rank = np.argsort(dist, axis=1)
    top = rank[:, :k1 + 1]
    in_top = np.zeros((n, n), dtype=bool)
    np.put_along_axis(in_top, top, True, axis=1)
    recip = in_top & in_top.T  # j in top(i) and i in top(j)
    half = max(1, int(round(k1 / 2)))
    top_h = rank[:, :half + 1]
    in_half = np.zeros((n, n), dtype=bool)
    np.put_along_axis(in_half, top_h, True, axis=1)
    recip_h = in_half & in_half.T
    # expansion: add j's half-size reciprocal set when it overlaps i's set by more than 2/3
    rf, hf = recip.astype(np.float32), recip_h.astype(np.float32)
    overlap = rf @ hf.T  # [i, j] = |R(i) & R_half(j)|
    cond = recip & (overlap > (2.0 / 3.0) * hf.sum(1)[None, :])
    expanded = recip | ((cond.astype(np.float32) @ hf) > 0)
    v = np.where(expanded, np.exp(-dist), 0.0).astype(np.float32)
    v /= np.maximum(v.sum(1, keepdims=True), 1e-12)
    if k2 > 1:
        v = v[rank[:, :k2]].mean(axis=1)
    mins = np.minimum(v[0][None, :], v[1:]).sum(1)
    maxs = np.maximum(v[0][None, :], v[1:]).sum(1)
    jaccard = 1.0 - mins / np.maximum(maxs, 1e-12)
    return (1 - lam) * jaccard + lam * dist[0, 1:]


def rerank(query: np.ndarray, cand_vecs: np.ndarray, cand_scores: np.ndarray, opts: RerankOptions
           ) -> tuple[np.ndarray, np.ndarray]:
    """(new scores, order) for the candidates: higher is better, order sorts them."""
    q = np.asarray(query, np.float32)
    scores = np.asarray(cand_scores, np.float32)
    if opts.qe > 0 and len(cand_vecs):
        n = min(opts.qe, len(cand_vecs))
        q = alpha_qe(q, cand_vecs[:n], scores[:n], opts.alpha)
        scores = cand_vecs @ q
    if opts.kreciprocal and len(cand_vecs) > 1:
        d = k_reciprocal_distance(np.vstack([q[None, :], cand_vecs]), opts.k1, opts.k2, opts.lam)
        scores = (1.0 - d).astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    return scores, order


class RerankingIndex:
    """A VectorIndex seen through re-ranking (search and len; one query at a time)."""

    def __init__(self, index, opts: RerankOptions) -> None:
        self.index = index
        self.opts = opts

    def __len__(self) -> int:
        return len(self.index)

    def _vectors(self, ids: np.ndarray) -> np.ndarray:
        return np.stack([self.index.reconstruct(int(i)) for i in ids]).astype(np.float32)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`allowed`: restrict to these ids (VectorIndex.search); the re-ranking sees only them.
        No more than the index holds (or `allowed` names) is asked for or returned: a k or a
        depth past it costs nothing."""
        q = np.atleast_2d(np.asarray(queries, np.float32))
        size = len(self.index) if allowed is None else min(len(self.index), len(allowed))
        k = max(1, min(int(k), size))
        fetch = max(1, min(max(k, self.opts.depth), size))
        out_s, out_i = [], []
        for row in q:
            scores, ids = self.index.search(row[None, :], fetch, allowed=allowed)
            scores, ids = scores[0], ids[0]
            valid = ids >= 0
            scores, ids = scores[valid], ids[valid]
            head = min(self.opts.depth, len(ids))
            new, order = rerank(row, self._vectors(ids[:head]), scores[:head], self.opts)
            top_s, top_i = new[order], ids[:head][order]
            # the tail keeps its order, below every re-ranked score
            floor = float(top_s.min()) if head else 0.0
            tail_s = floor - 1.0 - np.arange(len(ids) - head, dtype=np.float32) * 1e-6
            s = np.concatenate([top_s, tail_s])[:k]
            i = np.concatenate([top_i, ids[head:]])[:k]
            pad = k - len(i)
            out_s.append(np.pad(s, (0, pad), constant_values=-np.inf))
            out_i.append(np.pad(i, (0, pad), constant_values=-1))
        return np.stack(out_s).astype(np.float32), np.stack(out_i).astype(np.int64)
