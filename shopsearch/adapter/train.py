"""Train an Adapter: W (initialised to the identity) minimising a softmax loss over the
products' prototypes in the adapted space, plus lam * |W - I|^2 so that a little evidence
moves the space a little.

Training samples are the catalogue's own labelled image vectors (each scored against the
other images of its product: leave-one-out prototypes) and confirmed shopper queries
(query vector -> the product the shopper confirmed). Full-batch Adam on the CPU: seconds
for thousands of vectors of a few hundred to a couple of thousand dimensions."""
from __future__ import annotations

import time
from pathlib import Path
from dataclasses import asdict, dataclass
from typing import Iterable, Protocol, Sequence

import numpy as np

from shopsearch.adapter.model import Adapter
from shopsearch.embedders.base import l2_normalize
from shopsearch.errors import ConfigError, ManifestError


@dataclass(frozen=True)
class ConfirmedPair:
    """A logged query's vector and the product the shopper confirmed for it; `fingerprint`
    names the space the vector is in (the model, or model+adapter, that served the query)."""

    vector: np.ndarray
    sku: str
    fingerprint: str


class ConfirmedPairsSource(Protocol):
    """Where confirmed pairs come from (the feedback log, an exported file, a simulation)."""

    def confirmed_pairs(self) -> Iterable[ConfirmedPair]:
        """Every confirmed (query vector -> product) pair to learn from."""


@dataclass(frozen=True)
class AdapterOptions:
    lam: float = 0.1  # pull towards the identity (0.1 and 200 steps: chosen on Grocery Store's val photos)
    temperature: float = 0.05
    steps: int = 200
    lr: float = 1e-3
    query_weight: float = 1.0  # a confirmed query's weight against a catalogue image's
    batch: int = 512  # catalogue images and confirmed queries scored per step (each; all when fewer)
    seed: int = 0
    threads: int | None = None  # torch threads while training (None: as set); 1 on a crowded machine


@dataclass(frozen=True)
class TrainReport:
    catalogue_samples: int
    query_samples: int
    products: int
    dim: int
    seconds: float
    loss_start: float
    loss_end: float
    options: AdapterOptions

    def to_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "options"},
                "seconds": round(self.seconds, 3), "loss_start": round(self.loss_start, 4),
                "loss_end": round(self.loss_end, 4), "options": asdict(self.options)}


def usable_pairs(pairs: Iterable[ConfirmedPair], base_fingerprint: str, skus: set[str],
                 adapters: Sequence[Adapter] = ()) -> tuple[np.ndarray, list[str], int]:
    """Pairs in the model's own space (vectors logged by an adapted build are mapped back
    through their adapter); returns (vectors, skus, how many were left out: another model
    or a product no longer in the catalogue)."""
    back = {a.fingerprint: a for a in adapters}
    vecs, labels, skipped = [], [], 0
    for p in pairs:
        v = np.asarray(p.vector, dtype=np.float32).reshape(1, -1)
        if p.fingerprint in back and back[p.fingerprint].base_fingerprint == base_fingerprint:
            v = back[p.fingerprint].unapply(v).astype(np.float32)
        elif p.fingerprint != base_fingerprint:
            skipped += 1
            continue
        if p.sku not in skus:
            skipped += 1
            continue
        vecs.append(v[0])
        labels.append(p.sku)
    dim = vecs[0].shape[0] if vecs else 0
    return (np.stack(vecs) if vecs else np.zeros((0, dim), np.float32)), labels, skipped


def train_adapter(gallery: np.ndarray, gallery_skus: Sequence[str], base_fingerprint: str,
                  queries: np.ndarray | None = None, query_skus: Sequence[str] = (),
                  options: AdapterOptions = AdapterOptions()) -> tuple[Adapter, TrainReport]:
    """Fit W on the catalogue vectors `gallery` (labelled by product) and confirmed query
    vectors (labelled by the product confirmed); every vector in the model's own space."""
    snaps, report = train_adapter_path(gallery, gallery_skus, base_fingerprint, queries, query_skus, options,
                                       (options.steps,))
    return snaps[options.steps], report


def train_adapter_path(gallery: np.ndarray, gallery_skus: Sequence[str], base_fingerprint: str,
                       queries: np.ndarray | None, query_skus: Sequence[str], options: AdapterOptions,
                       checkpoints: Sequence[int]) -> tuple[dict[int, Adapter], TrainReport]:
    """One training run to options.steps, with the adapter as it was after each of
    `checkpoints` steps (choosing the number of steps on held-out queries costs one run)."""
    import torch  # noqa: PLC0415 - only the trainer needs it

    t0 = time.perf_counter()
    gallery = l2_normalize(gallery)
    if len(gallery) != len(gallery_skus):
        raise ConfigError("every catalogue vector needs its product")
    classes = sorted(set(gallery_skus))
    if len(classes) < 2:
        raise ConfigError("an adapter needs at least two products with images to tell apart")
    col = {s: i for i, s in enumerate(classes)}
    g_lab = np.array([col[s] for s in gallery_skus], dtype=np.int64)
    q = l2_normalize(queries) if queries is not None and len(queries) else np.zeros((0, gallery.shape[1]), np.float32)
    q_keep = [i for i, s in enumerate(query_skus) if s in col]  # a product without catalogue images has no prototype
    q, q_lab = q[q_keep], np.array([col[query_skus[i]] for i in q_keep], dtype=np.int64)
    counts = np.bincount(g_lab, minlength=len(classes))
    loo = np.flatnonzero(counts[g_lab] > 1)  # a product's only image has nothing of its own to be compared with
    if not len(loo) and not len(q):
        raise ConfigError("nothing to learn from: every product has one image and there are no confirmed queries")

    threads = torch.get_num_threads()
    if options.threads:
        torch.set_num_threads(options.threads)
    try:
        snaps, start, end = _fit(torch, gallery, g_lab, q, q_lab, len(classes), loo, options, set(checkpoints))
    finally:
        torch.set_num_threads(threads)
    info = {"trained_on": {"catalogue_images": int(len(gallery)), "confirmed_queries": int(len(q))},
            "options": asdict(options)}
    adapters = {n: Adapter(w, base_fingerprint, {**info, "steps": n}) for n, w in snaps.items()}
    return adapters, TrainReport(int(len(gallery)), int(len(q)), len(classes), gallery.shape[1],
                                 time.perf_counter() - t0, start, end, options)


def _fit(torch, gallery: np.ndarray, g_lab: np.ndarray, q: np.ndarray, q_lab: np.ndarray, n_classes: int,
         loo: np.ndarray, o: AdapterOptions, checkpoints: set[int]) -> tuple[dict[int, np.ndarray], float, float]:
    """Adam on W. Prototypes are the adapted sums of each product's catalogue vectors
    (W applied to the sums: linear, so one small product per step); each step scores a
    seeded sample of at most o.batch catalogue images and confirmed queries."""
    F = torch.nn.functional
    gen = torch.Generator().manual_seed(o.seed)
    dim = gallery.shape[1]
    G, Q = torch.from_numpy(gallery), torch.from_numpy(q)
    gl, ql = torch.from_numpy(g_lab), torch.from_numpy(q_lab)
    sums = torch.zeros(n_classes, dim).index_add_(0, gl, G)  # (C, dim), in the model's space
    eye = torch.eye(dim)
    W = torch.eye(dim, requires_grad=True)
    # Adam, by hand: torch.optim's first step imports torch._dynamo (seconds on a busy machine)
    m, v = torch.zeros_like(W), torch.zeros_like(W)
    pool = torch.from_numpy(loo)

    def loss_fn(g_idx: torch.Tensor, q_idx: torch.Tensor) -> torch.Tensor:
        adapted_sums = sums @ W.T
        protos = F.normalize(adapted_sums, dim=1)
        total, weight = 0.0, 0.0
        if len(g_idx):
            own = gl[g_idx]
            zu = G[g_idx] @ W.T
            z = F.normalize(zu, dim=1)
            logits = z @ protos.T
            # leave-one-out: the image's own product is scored against its other images only
            loo_proto = F.normalize(adapted_sums[own] - zu, dim=1)
            logits = logits.scatter(1, own[:, None], (z * loo_proto).sum(1, keepdim=True))
            total = total + F.cross_entropy(logits / o.temperature, own, reduction="sum")
            weight += float(len(g_idx))
        if len(q_idx):
            zq = F.normalize(Q[q_idx] @ W.T, dim=1)
            total = total + o.query_weight * F.cross_entropy(zq @ protos.T / o.temperature, ql[q_idx],
                                                             reduction="sum")
            weight += o.query_weight * len(q_idx)
        return total / weight + o.lam * ((W - eye) ** 2).sum() / dim

    def sample(n: int, k: int) -> torch.Tensor:
        return torch.arange(n) if n <= k else torch.randperm(n, generator=gen)[:k]

    every_g, every_q = pool, torch.arange(len(Q))
    with torch.no_grad():
        start = float(loss_fn(every_g, every_q))
    snaps = {0: np.eye(dim, dtype=np.float32)} if 0 in checkpoints else {}
    for step in range(1, o.steps + 1):
        loss = loss_fn(pool[sample(len(pool), o.batch)], sample(len(Q), o.batch))
        (grad,) = torch.autograd.grad(loss, [W])
        with torch.no_grad():
            m.mul_(0.9).add_(grad, alpha=0.1)
            v.mul_(0.999).addcmul_(grad, grad, value=0.001)
            W -= o.lr * (m / (1 - 0.9 ** step)) / ((v / (1 - 0.999 ** step)).sqrt() + 1e-8)
        if step in checkpoints:
            snaps[step] = W.detach().numpy().astype(np.float32).copy()
    with torch.no_grad():
        end = float(loss_fn(every_g, every_q))
    return snaps, start, end


def top1_recall(gallery: np.ndarray, gallery_skus: Sequence[str], queries: np.ndarray,
                query_skus: Sequence[str], adapter: Adapter | None = None) -> float:
    """Share of queries whose nearest catalogue image (exact cosine) shows their product:
    product-level recall@1 as the search service ranks (best image per product)."""
    if not len(queries):
        return 0.0
    g, qv = (gallery, queries) if adapter is None else (adapter.apply(gallery), adapter.apply(queries))
    nearest = np.argmax(l2_normalize(qv) @ l2_normalize(g).T, axis=1)
    skus = np.asarray(gallery_skus)
    return float(np.mean(skus[nearest] == np.asarray(query_skus)))


def save_pairs(path: Path, vectors: np.ndarray, skus: Sequence[str], fingerprint: str) -> None:
    """Confirmed pairs as a file (`--pairs`): an .npz of vectors, skus and their space's fingerprint."""
    with open(path, "wb") as f:
        np.savez(f, vectors=np.asarray(vectors, np.float32), skus=np.array(list(skus), dtype=str),
                 fingerprint=np.array(fingerprint))


def load_pairs(path: Path) -> list[ConfirmedPair]:
    """The pairs `save_pairs` wrote; ManifestError when the file is not such a file."""
    try:
        with np.load(path) as z:
            vectors, skus, fp = np.asarray(z["vectors"], np.float32), [str(s) for s in z["skus"]], str(z["fingerprint"])
    except (OSError, ValueError, KeyError) as e:
        raise ManifestError(f"{path} is not a confirmed-pairs file (.npz with vectors, skus, fingerprint): {e}") from None
    if vectors.ndim != 2 or len(vectors) != len(skus):
        raise ManifestError(f"{path}: {len(skus)} skus for vectors of shape {vectors.shape}")
    return [ConfirmedPair(v, s, fp) for v, s in zip(vectors, skus)]
