"""Run configurations over a labelled dataset: embed once per model (through the indexer
pipeline and its vector cache), build each configuration's index in memory, search every
query with the SearchService the composition root assembles (shopsearch.app, grouped per
product, routing included) and score the rankings.

Nothing here touches the serving index: the gallery lives in a throw-away SQLite catalogue
under a temporary folder and in an in-memory VectorIndex. Not through indexer's IndexBuilder:
the library does not import the ingestion package, a configuration changes the gallery
vectors before indexing (DBA, shopper views), and a published build (calibration, build
records, the CURRENT pointer) is not what a benchmark measures."""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from shopsearch.app import search_service_over
from shopsearch.config import GpuTuning
from shopsearch.embedding.pipeline import WorkItem, embed_items
from shopsearch.embedding.preprocess import decode_query
from shopsearch.embedding.cache import VectorCache
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.embedders.base import Embedder
from shopsearch.errors import ConfigError, InvalidImageError, ManifestError
from shopsearch.evaluation.configs import BenchConfig
from shopsearch.evaluation.datasets import BenchDataset, Query, truncate_category
from shopsearch.evaluation.metrics import QueryOutcome, Summary, percentiles, summarize
from shopsearch.evaluation.open_set import OpenSetFusion, OpenSetQuery, OpenSetResult, evaluate_open_set
from shopsearch.images import sha256_file
from shopsearch.index.sizing import choose_index_type, factory_string
from shopsearch.index.manifest import IndexManifest
from shopsearch.index.vector_index import VectorIndex
from shopsearch.evaluation import tta
from shopsearch.gallery_aug import blend, shopper_view_vectors
from shopsearch.centring import DomainCentring, adapt_gallery, fit_centring
from shopsearch.confidence_fit import LabelledQuery
from shopsearch.rerank import RerankOptions, dba_vectors, parse_rerank
from shopsearch.search import CategoryRouter

log = logging.getLogger("shopsearch.bench")

DatasetLoader = Callable[[str | None], BenchDataset]  # gallery protocol (None = default) -> dataset
RouterProvider = Callable[[Embedder], "CategoryRouter | None"]


@dataclass(frozen=True)
class RunOptions:
    ks: tuple[int, ...] = (1, 5, 10)
    batch_size: int = 32
    workers: int = 2
    latency_samples: int = 32  # queries embedded one at a time to time the embedding step
    category_depth: int = 2  # per-category breakdown at this depth of the category path
    progress: bool = True
    compile: str | None = None  # auto | on | off (Settings.pipeline.compile)
    gpu: GpuTuning | None = None  # the GPU executor's knobs (Settings.gpu)
    open_set: float | None = None  # share of products removed for the open-set benchmark
    open_set_seed: int = 0
    #: labelled photos the open-set calibration is fitted on (e.g. the validation split); none: the
    #: gallery's own photos, leave-one-out. When they are the queries, each is scored out of fold.
    calibration_queries: tuple[Query, ...] = ()
    #: leave-one-out calibration: same-product photos at least this similar are left out too
    near_duplicate: float | None = None
    #: unlabelled shopper photos whose mean centres the queries of `centre` configurations
    #: (none: the run's own query photos, as a service's logged searches would estimate it)
    centre_sample: tuple[Query, ...] = ()


@dataclass(frozen=True)
class GalleryBuild:
    images: int
    embedded: int
    reused: int
    failed: int
    embed_seconds: float
    images_per_s: float | None  # None when every vector came from the cache
    index_seconds: float

    def to_dict(self) -> dict:
        return {"images": self.images, "embedded": self.embedded, "reused": self.reused, "failed": self.failed,
                "embed_seconds": round(self.embed_seconds, 3),
                "images_per_s": round(self.images_per_s, 2) if self.images_per_s else None,
                "index_seconds": round(self.index_seconds, 4),
                "index_images_per_s": round(self.images / self.index_seconds, 1) if self.index_seconds > 0 else None}


@dataclass(frozen=True)
class ConfigResult:
    config: BenchConfig
    model: str
    fingerprint: str
    index_type: str
    dataset: BenchDataset
    summary: Summary
    gallery_vectors: int
    queries_total: int
    queries_failed: int
    latency_ms: dict
    build: GalleryBuild
    factory: str = ""  # the FAISS factory string the index type stood for
    outcomes: tuple[QueryOutcome, ...] = field(repr=False, default=())
    open_set: OpenSetResult | None = None
    centring: dict = field(default_factory=dict)  # where the domain means came from (centre configurations)


@dataclass
class _ModelState:
    embedder: Embedder
    cache: VectorCache
    query_keys: dict[str, str] = field(default_factory=dict)  # query path -> cache key
    gallery_report: dict[str, tuple[int, int, int, float]] = field(default_factory=dict)
    embed_ms: list[float] = field(default_factory=list)
    embed_ms_for: list[int] = field(default_factory=list)  # query indices the samples belong to
    cache_root: Path | None = None
    mirrored: VectorCache | None = None  # query test-time augmentation, embedded when a config asks
    tta_ms: list[float] = field(default_factory=list)


def run_benchmark(load: DatasetLoader, configs: Sequence[BenchConfig], cache_root: Path,
                  embedder_for: Callable[[str], Embedder], router_for: RouterProvider,
                  options: RunOptions = RunOptions(), workdir: Path | None = None) -> list[ConfigResult]:
    """Every configuration over the same queries; embeddings computed once per model."""
    if not configs:
        raise ConfigError("no benchmark configuration given")
    datasets = {g: load(g) for g in dict.fromkeys(c.gallery for c in configs)}
    first = next(iter(datasets.values()))
    if any([q.path for q in d.queries] != [q.path for q in first.queries] for d in datasets.values()):
        raise ConfigError("the configurations' galleries imply different query sets; they cannot be compared")
    embedders = {m: embedder_for(m) for m in dict.fromkeys(c.model for c in configs)}
    routers: dict[str, CategoryRouter | None] = {}
    for c in configs:
        if (c.routing or c.fusion) and c.model not in routers:
            routers[c.model] = router_for(embedders[c.model])
            if routers[c.model] is None:
                raise ConfigError(
                    f"configuration {c.label!r} asks for category routing, but no trained category router exists "
                    f"for model {embedders[c.model].name!r} ({embedders[c.model].fingerprint}); train one for this "
                    "model first, or set routing=off")
    keys = _hash_images(datasets, tuple(first.queries) + options.calibration_queries + options.centre_sample,
                        options.progress)
    with tempfile.TemporaryDirectory(prefix="shopsearch-bench-", dir=workdir) as tmp:
        catalogues = {g: _gallery_catalogue(d, keys, Path(tmp) / f"gallery-{i}.db")
                      for i, (g, d) in enumerate(datasets.items())}
        try:
            states = {m: _embed_model(e, datasets, first.queries, keys, cache_root, options)
                      for m, e in embedders.items()}
            results = []
            for c in configs:
                st = states[c.model]
                results.append(_run_config(c, st, datasets[c.gallery], catalogues[c.gallery], routers.get(c.model),
                                           options))
        finally:
            for cat in catalogues.values():
                cat[0].close()
    return results


# -- preparation ------------------------------------------------------------------
def _hash_images(datasets: dict[str | None, BenchDataset], queries: Sequence[Query], progress: bool) -> dict[str, str]:
    """path -> content sha256 (the vector cache key); unreadable files are left out."""
    paths = sorted({im.path for d in datasets.values() for p in d.products for im in p.images}
                   | {q.path for q in queries})
    keys = {}
    for p in tqdm(paths, desc="hashing images", unit="img", disable=not progress):
        try:
            keys[p] = sha256_file(p)
        except OSError as e:
            log.warning("bench image unreadable", extra={"path": p, "error": str(e)})
    return keys


def _gallery_catalogue(d: BenchDataset, keys: dict[str, str], db_path: Path) -> tuple[CatalogueStore, dict[int, str]]:
    """A private SQLite catalogue of the gallery; returns it and image id -> cache key."""
    store = CatalogueStore.open(f"sqlite:///{db_path}")
    for p in d.products:
        imgs = tuple(replace(im, sha256=keys[im.path]) if im.path in keys else
                     replace(im, status="missing", error="unreadable") for im in p.images)
        store.upsert_product(replace(p, images=imgs))
    return store, {img.id: img.sha256 for img in store.indexable_images() if img.sha256}


def _embed_model(embedder: Embedder, datasets: dict[str | None, BenchDataset], queries: Sequence[Query],
                 keys: dict[str, str], cache_root: Path, o: RunOptions) -> _ModelState:
    st = _ModelState(embedder, VectorCache(cache_root, embedder.fingerprint, embedder.dim), cache_root=cache_root)
    for g, d in datasets.items():
        items = [WorkItem(keys[im.path], im.path) for p in d.products for im in p.images if im.path in keys]
        rep = embed_items(embedder, items, st.cache, batch_size=o.batch_size, workers=o.workers, progress=o.progress,
                          compile=o.compile, gpu=o.gpu)
        st.gallery_report[str(g)] = (rep.embedded, rep.skipped, len(rep.failed), rep.seconds)
        log.info("bench gallery embedded", extra={"model": embedder.name, "gallery": g, "embedded": rep.embedded,
                                                  "reused": rep.skipped, "images_per_s": rep.images_per_s})
    q_items = [WorkItem(keys[q.path], q.path) for q in tuple(queries) + o.calibration_queries + o.centre_sample
               if q.path in keys]
    embed_items(embedder, q_items, st.cache, batch_size=o.batch_size, workers=o.workers, progress=o.progress,
                compile=o.compile, gpu=o.gpu)
    st.query_keys = {it.path: it.key for it in q_items}
    _time_embedding(st, queries, o.latency_samples)
    return st


def _time_embedding(st: _ModelState, queries: Sequence[Query], samples: int) -> None:
    """A shopper's query is one image: decode + preprocess + encode, one at a time."""
    n = min(samples, len(queries))
    if n <= 0:
        return
    picks = np.unique(np.linspace(0, len(queries) - 1, n).astype(int))
    try:  # the first call pays one-off costs (lazy init, allocator warm-up): not a query's cost
        st.embedder.encode_images([decode_query(queries[int(picks[0])].path, st.embedder)])
    except InvalidImageError:
        pass
    for i in picks:
        t0 = time.perf_counter()
        try:
            st.embedder.encode_images([decode_query(queries[int(i)].path, st.embedder)])
        except InvalidImageError:
            continue
        st.embed_ms.append((time.perf_counter() - t0) * 1000)
        st.embed_ms_for.append(int(i))


# -- one configuration --------------------------------------------------------------
def _run_config(c: BenchConfig, st: _ModelState, d: BenchDataset, cat: tuple[CatalogueStore, dict[int, str]],
                router: CategoryRouter | None, o: RunOptions) -> ConfigResult:
    store, id_keys = cat
    emb = st.embedder
    good = [(i, k) for i, k in id_keys.items() if k in st.cache]
    if not good:
        raise ManifestError(f"no gallery image of {d.name} could be embedded with {emb.name}")
    itype = choose_index_type(len(good)) if c.index == "auto" else c.index
    t0 = time.perf_counter()
    index = VectorIndex(emb.dim, itype, expected_size=len(good))
    gallery = st.cache.get_many([k for _, k in good])
    if c.shopper_views and st.cache_root is not None:
        paths = {img.sha256: img.path for img in store.indexable_images() if img.sha256}
        views = shopper_view_vectors(emb, [(paths[k], k) for _, k in good if k in paths], c.shopper_views,
                                     st.cache_root, o.batch_size, o.progress, piles=c.pile_views)
        gallery = blend(gallery, np.stack([views.get_many([k])[0] if k in views else gallery[j]
                                           for j, (_, k) in enumerate(good)]))
    centring = _centring(st, gallery, d.queries, o) if c.centre else None
    if centring is not None:
        if c.whiten:
            centring = centring.with_whitening(_sample_vectors(st, d.queries, o), c.whiten)
        gallery = centring.gallery(gallery)
        if c.adapt:
            gallery = adapt_gallery(gallery, centring.query(_sample_vectors(st, d.queries, o)), c.adapt)
    if c.dba:
        gallery = dba_vectors(gallery, c.dba)
    index.add(np.array([i for i, _ in good], dtype=np.int64), gallery)
    if c.ef_search is not None:
        index.ef_search = c.ef_search
    if c.nprobe is not None:
        index.nprobe = c.nprobe
    index_s = time.perf_counter() - t0
    manifest = IndexManifest(f"bench-{c.label}", emb.name, emb.fingerprint, emb.dim, len(index), itype,
                             time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    svc = search_service_over(emb, index, store, manifest, router=router if c.routing or c.fusion else None,
                              rerank=c.rerank, fusion=c.fusion, centring=centring)
    if c.tta:
        _prepare_tta(st, d.queries, o)
    depth = max(o.ks)
    outcomes: list[QueryOutcome] = []
    search_ms: dict[int, float] = {}
    failed = 0
    for qi, q in enumerate(tqdm(d.queries, desc=f"searching [{c.label}]", unit="q", disable=not o.progress)):
        key = st.query_keys.get(q.path)
        if key is None or key not in st.cache:
            failed += 1  # unreadable or undecodable query photo: reported, not scored
            continue
        vec = st.cache.get_many([key])[0]
        if c.tta and st.mirrored is not None and key in st.mirrored:
            vec = tta.combine(vec, st.mirrored.get_many([key])[0])[0]
        t = time.perf_counter()
        res = svc.search_vector(vec, k=depth, routing=c.routing or c.fusion)
        search_ms[qi] = (time.perf_counter() - t) * 1000
        outcomes.append(QueryOutcome(q.path, tuple(h.sku for h in res.hits), d.relevant(q),
                                     truncate_category(q.category, o.category_depth)))
    summary = summarize(outcomes, o.ks)
    weight = float(getattr(router, "fusion_weight", 0.0) or 0.0) if c.fusion else 0.0
    open_set = (_open_set(index, store, st, d, o, parse_rerank(c.rerank), weight, centring)
                if o.open_set is not None else None)
    embedded, reused, nfail, secs = st.gallery_report[str(c.gallery)]
    build = GalleryBuild(len(id_keys), embedded, reused, nfail, secs, embedded / secs if embedded and secs else None,
                         index_s)
    return ConfigResult(c, emb.name, emb.fingerprint, itype, d, summary, len(index), len(d.queries), failed,
                        _latency(st, search_ms, c.tta), build, factory_string(itype, emb.dim, len(good)), tuple(outcomes),
                        open_set, centring.info if centring is not None else {})


def _sample_vectors(st: _ModelState, queries: Sequence[Query], o: RunOptions) -> np.ndarray:
    """The unlabelled shopper photos' vectors: the --centre-sample photos, else the queries'."""
    sample = o.centre_sample or tuple(queries)
    keys = [st.query_keys[q.path] for q in sample if q.path in st.query_keys and st.query_keys[q.path] in st.cache]
    return st.cache.get_many(keys) if keys else np.zeros((0, st.embedder.dim), np.float32)


def _centring(st: _ModelState, gallery: np.ndarray, queries: Sequence[Query], o: RunOptions) -> DomainCentring:
    """Domain means: the gallery's vectors and the unlabelled sample's (else the queries')."""
    vecs = _sample_vectors(st, queries, o)
    source = f"{len(vecs)} sample photos" if o.centre_sample else f"the {len(vecs)} query photos (labels unused)"
    return fit_centring(gallery, vecs, st.embedder.fingerprint, source)


def _open_set(index: VectorIndex, store: CatalogueStore, st: _ModelState, d: BenchDataset,
              o: RunOptions, rerank: RerankOptions, fusion_weight: float = 0.0,
              centring: DomainCentring | None = None) -> OpenSetResult:
    """The open-set benchmark over this configuration's gallery vectors and every scorable query;
    `fusion_weight` > 0 (a fused configuration): searches are fused with a head trained on the kept
    products' gallery photos only, with the served router's weight."""
    info = store.products_for_images([int(i) for i in index.ids()])
    product_of = {i: prod.sku for i, (prod, _) in info.items()}
    hash_of = {i: img.sha256 for i, (_, img) in info.items()}
    fusion = (OpenSetFusion(probe_head, fusion_weight, {prod.sku: (prod.category or "").strip("/")
                                                        for prod, _ in info.values()})
              if fusion_weight > 0 else None)

    def vector(q: Query) -> np.ndarray | None:
        key = st.query_keys.get(q.path)
        if key is None or key not in st.cache:
            return None
        vec = st.cache.get_many([key])[0]
        return vec if centring is None else centring.query(vec)  # the index holds centred vectors

    queries = [OpenSetQuery(v, d.relevant(q)) for q in d.queries if d.relevant(q) and (v := vector(q)) is not None]
    labelled = [LabelledQuery(v, q.sku) for q in o.calibration_queries if q.sku and (v := vector(q)) is not None]
    same = {q.path for q in o.calibration_queries} == {q.path for q in d.queries}
    return evaluate_open_set(index, product_of, hash_of, queries, float(o.open_set), o.open_set_seed,
                             labelled=labelled, labelled_are_queries=same and bool(labelled), rerank=rerank,
                             near_duplicate=o.near_duplicate, fusion=fusion)


def probe_head(vectors: np.ndarray, categories: Sequence[str]) -> tuple[Callable[[np.ndarray], np.ndarray],
                                                                        tuple[str, ...]]:
    """The served head's recipe (the cross-validated logistic-regression probe) on these vectors alone."""
    from shopsearch.classify.probe import fit_probe  # noqa: PLC0415 - torch: only for fused open sets

    columns = tuple(sorted(set(categories)))
    col = {c: j for j, c in enumerate(columns)}
    probe = fit_probe(np.asarray(vectors, np.float32), np.array([col[c] for c in categories]), len(columns))

    def probabilities(x: np.ndarray) -> np.ndarray:
        z = probe.logits(np.atleast_2d(np.asarray(x, np.float32)))
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    return probabilities, columns


def _latency(st: _ModelState, search_ms: dict[int, float], tta_on: bool = False) -> dict:
    """Per stage p50/p95/p99; total = embed + search of the same sampled query (search alone
    when no embedding was timed). The top-level p50/p95/p99 are the total's. With test-time
    augmentation the embedding step is the timed photo-plus-mirror one."""
    embed_ms = st.tta_ms if tta_on else st.embed_ms
    totals = [e + search_ms[i] for e, i in zip(embed_ms, st.embed_ms_for) if i in search_ms]
    total = percentiles(totals if totals else search_ms.values())
    return {**total, "embed": percentiles(embed_ms), "search": percentiles(search_ms.values()),
            "total": total, "embed_samples": len(embed_ms), "search_samples": len(search_ms),
            "total_includes_embed": bool(totals)}


def _prepare_tta(st: _ModelState, queries: Sequence[Query], o: RunOptions) -> None:
    """Mirrored query vectors (cached) and the photo-plus-mirror embedding time, once per model."""
    if st.mirrored is not None or st.cache_root is None:
        return
    keys = [(q.path, st.query_keys[q.path]) for q in queries if q.path in st.query_keys]
    st.mirrored = tta.flipped_cache(st.embedder, st.cache_root, keys, o.batch_size, o.progress)
    # the same sampled queries as the plain timing (plus one warm-up call)
    picks = [queries[st.embed_ms_for[0]].path] + [queries[i].path for i in st.embed_ms_for] if st.embed_ms_for else []
    st.tta_ms = tta.time_tta(st.embedder, picks)
