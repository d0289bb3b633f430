"""The composition root: Settings -> catalogue store, index store, embedder, router and
search service. The CLI (indexer/cli), the web app (webapp/service.py) and the benchmark
runner (`shopsearch bench`) build their services here and nowhere else; this module holds
no logic of its own beyond choosing which piece goes with which."""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from shopsearch.catalogue.db import sqlite_file
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.config import FP16_SCANS_MIN, Settings, available_cpus
from shopsearch.errors import ConfigError, DatabaseUnavailableError
from shopsearch.index.store import IndexStore

# The models, search and calibration pieces are imported by the functions that assemble them:
# commands that only open the stores (`index status`, `catalogue import`) skip PIL, the
# embedding pipeline and the search service at start-up.
if TYPE_CHECKING:
    from shopsearch.calibration_source import BuildCalibrator
    from shopsearch.centring import DomainCentring
    from shopsearch.confidence import Calibration
    from shopsearch.embedders.base import Embedder
    from shopsearch.embedders.precision import PrecisionChoice
    from shopsearch.index.manifest import IndexManifest
    from shopsearch.index.vector_index import VectorIndex
    from shopsearch.search import CategoryRouter, SearchService

log = logging.getLogger("shopsearch.app")


def open_catalogue(settings: Settings, migrate: bool = True, create: bool = True) -> CatalogueStore:
    """The catalogue store; `create`=False (commands that only read) refuses a SQLite file that does not
    exist yet, rather than making an empty one where a --data-dir or --database-url was mistyped."""
    if not create:
        path = sqlite_file(settings.db_url)
        if path is not None and not path.is_file():
            raise DatabaseUnavailableError(
                f"there is no catalogue at {path}: nothing was imported into this data folder yet. Check "
                "--data-dir / --database-url (SHOPSEARCH_DATA_DIR, SHOPSEARCH_DATABASE_URL), or run "
                "`shopsearch catalogue import` first")
    return CatalogueStore.open(settings.db_url, migrate=migrate)


def open_index_store(settings: Settings) -> IndexStore:
    return IndexStore(settings.index_dir)


def load_model(settings: Settings, spec: str | None = None) -> Embedder:
    """The embedder `spec` names (default settings.model) on settings.device; fine-tuned
    models and int8 calibrations are looked up in settings.models_dir. Loaded once per
    process: the same spec, device and models folder give the same object."""
    from shopsearch.embedders import load_embedder

    return load_embedder(spec or settings.model, settings.device, settings.models_dir)


def model_to_build(settings: Settings, store: IndexStore, spec: str | None = None) -> tuple[str, IndexManifest | None]:
    """The model spec an index build runs, and the serving build whose model it keeps (None when
    `spec` was asked for or nothing serves). A rebuild without `spec` keeps the serving build's
    model (without its precision: model_for_build keeps that, unless another is asked for), so
    "auto" or settings.model never switches the model of an existing index; only a first build
    runs settings.model."""
    if spec:
        return spec, None
    serving = store.current_manifest()
    if serving is None:
        return settings.model, None
    from shopsearch.embedders import parse_spec

    return str(replace(parse_spec(serving.model_name), precision="fp32")), serving


def model_for_build(settings: Settings, store: IndexStore, spec: str | None = None,
                    precision: str | None = None) -> tuple[Embedder, PrecisionChoice]:
    """The embedder an index build runs: `spec` (default settings.model) in `precision` (default
    settings.precision) when the spec names none. "auto" keeps the serving build's precision for
    the same model (its vectors stay reusable), else times fp32 against bf16 once per machine
    (the answer kept under settings.cache_dir)."""
    from shopsearch.embedders import parse_spec, resolve_device, resolved_spec
    from shopsearch.embedders.precision import PrecisionChoice, choose_precision, names_precision, with_precision

    spec = spec or settings.model
    precision = precision or settings.precision
    device = resolve_device(settings.device)
    if names_precision(spec) or precision != "auto":
        chosen = with_precision(spec, precision, device)  # a suffix in the spec wins
        choice = PrecisionChoice(chosen, parse_spec(chosen).precision)
    else:
        serving = store.current_manifest()
        built = parse_spec(serving.model_name) if serving is not None else None
        # "auto" is compared as the model it loads: a rebuild of the demo's index keeps its
        # precision, hence its classifier head and cached vectors
        if built is not None and str(replace(built, precision="fp32")) == str(
                parse_spec(resolved_spec(spec, device, settings.models_dir))):
            choice = PrecisionChoice(str(built), built.precision)
        else:
            choice = choose_precision(spec, device, settings.models_dir, settings.cache_dir / "precision.json")
    return load_model(settings, choice.spec), choice


def embedder_for_index(settings: Settings, store: IndexStore, model: str | None = None) -> Embedder:
    """The embedder that built the serving index (or `model`, which must then match it)."""
    manifest = store.current_manifest()
    if manifest is None:
        return load_model(settings, model)
    return embedder_for_build(settings, store, manifest, model)


def embedder_for_build(settings: Settings, store: IndexStore, manifest: IndexManifest,
                       model: str | None = None) -> Embedder:
    """The query embedder of one build: its model (or `model`), through the build's adapter
    when it was made with one (shopsearch.adapter)."""
    from shopsearch.adapter.model import with_build_adapter

    return with_build_adapter(load_model(settings, model or manifest.model_name), store.build_dir(manifest.build_id))


def open_search_service(settings: Settings, catalogue: CatalogueStore | None = None, model: str | None = None,
                        router: CategoryRouter | None = None, with_router: bool = True,
                        embedder: Embedder | None = None, build_id: str | None = None) -> SearchService:
    """A SearchService over the serving index build (or `build_id`'s, e.g. the shadow build).
    `embedder` (tests) replaces the model that built the index; `router` replaces the
    trained category router."""
    from shopsearch.centring import build_centring
    from shopsearch.confidence import load_calibration
    from shopsearch.index.vector_index import VectorIndex

    store = open_index_store(settings)
    index, manifest = store.load_current() if build_id is None else VectorIndex.load(store.build_dir(build_id))
    place_index(index, settings)
    embedder = embedder or embedder_for_build(settings, store, manifest, model)
    catalogue = catalogue or open_catalogue(settings)
    if router is None and with_router:
        router = load_router(settings, embedder)
    return search_service_over(embedder, index, catalogue, manifest, router=router, rerank=settings.rerank,
                               tta=settings.tta, fusion=settings.fusion,
                               calibration=load_calibration(store.build_dir(manifest.build_id), manifest.build_id),
                               centring=build_centring(store.build_dir(manifest.build_id)))


def search_service_over(embedder: Embedder, index: VectorIndex, catalogue: CatalogueStore, manifest: IndexManifest,
                        router: CategoryRouter | None = None, rerank: str | None = None, tta: bool = False,
                        fusion: bool = False, calibration: Calibration | None = None,
                        centring: DomainCentring | None = None) -> SearchService:
    """A SearchService over an index already in memory: the serving build's (above) or a
    benchmark gallery's (shopsearch.evaluation.runner). `rerank` is the settings' string
    (off | qe | kr | qe+kr, with parameters)."""
    from shopsearch.confidence import scoring_key
    from shopsearch.rerank import parse_rerank
    from shopsearch.search import SearchService

    rerank_options = parse_rerank(rerank)
    if calibration is not None and calibration.fitted:
        fused = fusion and getattr(router, "fusion_weight", 0.0) > 0
        serving = scoring_key(rerank_options.spec, fused)
        # fused searches are scored by a calibration of plain similarity too (SearchService.search_vector)
        if calibration.scoring not in (serving, scoring_key(rerank_options.spec, False)):
            log.warning("confidence calibrated on another scoring path: searches on this one are uncalibrated",
                        extra={"calibrated_on": calibration.scoring, "serving": serving,
                               "fix": "shopsearch index calibrate"})
    return SearchService(embedder, index, catalogue, manifest, router=router, rerank=rerank_options,
                         tta=tta, fusion=fusion, calibration=calibration, centring=centring)


def place_index(index: VectorIndex, settings: Settings) -> bool:
    """Give a served index its float16 copy for filtered scans (settings.fp16_scans) and move
    searching to the GPU as settings.faiss_gpu says; True when it runs there."""
    from shopsearch.index.faiss_gpu import gpu_available

    if settings.fp16_scans == "on" or (settings.fp16_scans == "auto" and len(index) >= FP16_SCANS_MIN):
        made = index.make_half_copy(settings.scan_threads or min(2, available_cpus()))
        if made:
            log.info("float16 copy for filtered scans", extra={"vectors": index.base_count, "bytes": made})

    mode = (settings.faiss_gpu or "auto").lower()
    if mode not in ("auto", "on", "off"):
        raise ConfigError(f"SHOPSEARCH_FAISS_GPU must be auto, on or off, not {settings.faiss_gpu!r}")
    if mode == "off" or (mode == "auto" and (settings.device == "cpu" or not gpu_available())):
        return False
    if index.to_gpu():
        return True
    if mode == "on":
        why = ("this FAISS build has no GPU support or sees no GPU (pip install faiss-gpu-cu12)"
               if not gpu_available() else f"FAISS cannot run a {index.index_type} index on the GPU")
        raise ConfigError(f"SHOPSEARCH_FAISS_GPU=on, but {why}")
    return False


def load_router(settings: Settings, embedder: Embedder) -> CategoryRouter | None:
    """The category router trained for this embedder, when one exists (issue: category tagging)."""
    from shopsearch.classify.router import load_router_for  # noqa: PLC0415 - imports torch: only when asked

    return load_router_for(settings, embedder)


def serving_fusion(settings: Settings, embedder: Embedder, catalogue: CatalogueStore) -> Any:
    """How the serving search fuses the category head (a confidence_fit.FusedRanking), or None when
    it does not (SHOPSEARCH_FUSION off, no trained head, or a fusion weight of 0)."""
    from shopsearch.confidence_fit import fused_ranking_for

    if not settings.fusion:
        return None
    return fused_ranking_for(load_router(settings, embedder), catalogue.products())


def build_calibrator(settings: Settings, store: IndexStore, embedder: Embedder,
                     catalogue: CatalogueStore) -> BuildCalibrator:
    """How the builds of `store` fit their confidence: on the labelled photos remembered beside the
    index (searched as the shop serves them, fused with the head when it is), else on the catalogue."""
    from shopsearch.calibration_source import BuildCalibrator, LabelledSource, remembered_photos
    from shopsearch.rerank import parse_rerank

    rows = remembered_photos(store.root)
    labelled = None if rows is None else LabelledSource(
        tuple(rows), embedder, catalogue, settings.vector_cache_dir,
        fusion=lambda: serving_fusion(settings, embedder, catalogue))
    return BuildCalibrator(parse_rerank(settings.rerank), labelled)
