"""How familiar a photo is to the catalogue: a class-conditional Gaussian over the index's own
vectors, one class per product with one covariance shared by all (Lee et al., NeurIPS 2018), read
relative to one Gaussian of the whole catalogue (relative Mahalanobis, Ren et al. 2021), so that
directions every photo varies along do not count as unfamiliar.

`familiarity(x)` is minus the smallest relative squared Mahalanobis distance to a product, per
dimension: a photo of a product the shop does not sell lies farther from every product's photos, in
units of how one product's photos spread, than a photo of a product it sells. It is one feature of
the confidence calibration (shopsearch.confidence, feature `density`), fitted with it on the
serving build's vectors and stored beside it (density.npz). Serving costs one projection of the
query (dim x dim) and one distance per product."""
from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Mapping, Sequence

import numpy as np

DENSITY_FILE = "density.npz"
#: both covariances get SHRINKAGE x the mean within-product variance added to their diagonal: the
#: catalogue has fewer photos per product than dimensions (chosen on the Grocery Store validation
#: photos: benchmarks/results/open_set_density_val.json)
SHRINKAGE = 10.0
#: the covariances are estimated on at most this many vectors (seeded sample); every product's mean on all
MAX_FIT_VECTORS = 20000
#: wider vectors get no density model (a dim x dim eigendecomposition at each calibration, and stored)
MAX_DIM = 4096
#: more products get no density model: every query would pay one distance per product, and the
#: stored means would grow with the catalogue (searches then state the fallback)
MAX_PRODUCTS = 100_000


@dataclass(frozen=True, eq=False)
class ProductDensity:
    """Whitened coordinates z = x @ proj, whose squared distance to a product's whitened mean is
    its Mahalanobis distance; `proj0`, `mean0`: the same for the catalogue as a whole."""

    proj: np.ndarray  # (dim, dim)
    means: np.ndarray  # (products, dim), whitened
    proj0: np.ndarray  # (dim, dim)
    mean0: np.ndarray  # (dim,), whitened by proj0
    products: tuple[Any, ...] = ()  # the rows of `means` (kept in memory for fitting; not stored)
    counts: np.ndarray | None = None  # photos per row of `means` (in memory for fitting; not stored)

    @cached_property
    def _serving(self) -> tuple[np.ndarray, np.ndarray, int]:
        """The distances as one matrix product per query, in float32: with z = x proj and
        z0 = x proj0 - mean0, |z - m|^2 - |z0|^2 = x Q x' - 2 x (proj m') + |m|^2 + 2 x (proj0 mean0') - |mean0|^2,
        Q = proj proj' - proj0 proj0' (formed in float64). [Q | proj means' | proj0 mean0'] is about half
        the bytes of [proj | proj0], which every query reads whole (issue 18:
        benchmarks/results/confidence_cost.json measured the read before)."""
        dim = self.proj.shape[0]
        quad = self.proj @ self.proj.T - self.proj0 @ self.proj0.T
        lin = np.hstack([self.proj @ self.means.T, (self.proj0 @ self.mean0)[:, None]])
        norms = (self.means * self.means).sum(1) - float(self.mean0 @ self.mean0)
        return np.hstack([quad, lin]).astype(np.float32), norms.astype(np.float32), dim

    def relative_distances(self, x: np.ndarray) -> np.ndarray:
        """(N, products) relative squared Mahalanobis distances, per dimension."""
        mat, norms, dim = self._serving
        x = np.atleast_2d(np.asarray(x, np.float32))
        y = x @ mat
        quad = (y[:, :dim] * x).sum(1) + 2.0 * y[:, -1]
        d = quad[:, None] - 2.0 * y[:, dim:-1] + norms[None, :]
        return (d / x.shape[1]).astype(np.float64)

    def familiarity(self, x: np.ndarray, without: Any = None) -> np.ndarray:
        """Minus the nearest product's relative distance, per row of x (higher: more like the catalogue);
        `without`: a product left out of the catalogue (a search standing for one the shop lacks)."""
        d = self.relative_distances(x)
        if without is not None and without in self.products and len(self.products) > 1:
            d[:, self.products.index(without)] = np.inf
        return -d.min(axis=1)

    def held_out(self, x: np.ndarray, products: Sequence[Any], removed: Sequence[np.ndarray]
                 ) -> tuple[np.ndarray, np.ndarray]:
        """For catalogue photos used as pseudo-queries (row i of x, a photo of products[i]): (their
        familiarity with `removed[i]`, rows of that product's photos the query itself among them, taken
        out of its product's mean; their familiarity with the whole product left out). A photo of the
        fit is otherwise its own product's mean's pull, and looks more familiar than a shopper's."""
        x = np.atleast_2d(np.asarray(x, np.float64))
        d = self.relative_distances(x)
        out = d.copy()
        row = {p: j for j, p in enumerate(self.products)}
        z, z0 = x @ self.proj, x @ self.proj0 - self.mean0
        for i, (p, gone) in enumerate(zip(products, removed)):
            j = row.get(p)
            if j is None:
                continue
            out[i, j] = np.inf
            n, k = float(self.counts[j]) if self.counts is not None else 0.0, len(gone)
            if n - k >= 1:  # the mean of the product's remaining photos
                m = (n * self.means[j] - (np.asarray(gone, np.float64) @ self.proj).sum(0)) / (n - k)
                d[i, j] = (float(((z[i] - m) ** 2).sum()) - float((z0[i] ** 2).sum())) / x.shape[1]
            else:
                d[i, j] = np.inf
        return -d.min(axis=1), -out.min(axis=1)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, proj=self.proj.astype(np.float32), means=self.means.astype(np.float32),
                 proj0=self.proj0.astype(np.float32), mean0=self.mean0.astype(np.float32))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "ProductDensity":
        with np.load(io.BytesIO(data)) as z:
            parts = {k: np.asarray(z[k], np.float64) for k in ("proj", "means", "proj0", "mean0")}
        dim = parts["proj"].shape[0]
        if parts["proj"].shape != (dim, dim) or parts["proj0"].shape != (dim, dim) or parts["means"].shape[1:] != (dim,) \
                or parts["mean0"].shape != (dim,):
            raise ValueError("density.npz: inconsistent shapes")
        density = cls(**parts)
        density.relative_distances(np.zeros(dim))  # the expanded form now, as the service loads, not in a search
        return density


def _whitening(cov: np.ndarray, ridge: float) -> np.ndarray:
    """P with P P^T = (cov + ridge * I)^-1."""
    e, u = np.linalg.eigh(cov)
    return u / np.sqrt(np.maximum(e, 0.0) + ridge)


def fit_density(vectors: np.ndarray, products: Any, shrinkage: float = SHRINKAGE,
                max_vectors: int = MAX_FIT_VECTORS, seed: int = 0,
                max_products: int = MAX_PRODUCTS) -> ProductDensity | None:
    """Fit on vectors and their products (one label per row); None with fewer than two products or
    more than `max_products`, no product with two photos, or vectors wider than MAX_DIM."""
    x = np.asarray(vectors, np.float64)
    labels = list(products)
    keys = sorted(set(labels), key=str)
    if not 2 <= len(keys) <= max_products or len(x) <= len(keys) or x.shape[1] > MAX_DIM:
        return None
    row = {p: i for i, p in enumerate(keys)}
    idx = np.array([row[p] for p in labels])
    counts = np.bincount(idx, minlength=len(keys)).astype(np.float64)
    means = np.zeros((len(keys), x.shape[1]))
    np.add.at(means, idx, x)
    means /= counts[:, None]
    pick = np.arange(len(x))
    if len(x) > max_vectors:
        pick = np.sort(np.random.default_rng(seed).choice(len(x), max_vectors, replace=False))
    within = x[pick] - means[idx[pick]]
    mean0 = x.mean(0)
    total = x[pick] - mean0
    cov = within.T @ within / len(pick)
    # one ridge for both, in units of one product's spread: the whole catalogue's covariance is not
    # shrunk harder for being wider
    ridge = shrinkage * max(float(np.trace(cov)) / len(cov), 1e-12)
    proj = _whitening(cov, ridge)
    proj0 = _whitening(total.T @ total / len(pick), ridge)
    return ProductDensity(proj, means @ proj, proj0, mean0 @ proj0, tuple(keys), counts)


def fit_index_density(index: Any, product_of: Mapping[int, Any], shrinkage: float = SHRINKAGE,
                      seed: int = 0) -> ProductDensity | None:
    """The density of an index's vectors (`product_of`: image id -> product), as searches see them."""
    ids = sorted(int(i) for i in product_of)
    if not ids or len(set(product_of.values())) > MAX_PRODUCTS:  # before reading any vector back
        return None
    vecs = np.stack([index.reconstruct(i) for i in ids])
    return fit_density(vecs, [product_of[i] for i in ids], shrinkage, seed=seed)
