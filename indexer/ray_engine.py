"""`--engine ray`: index builds whose embedding (and IVF adding) runs on a Ray cluster.

`RayIndexBuilder` is the local IndexBuilder with two stages moved onto the cluster:

- embed: the plan's images that the vector cache lacks are embedded by the Ray Data
  pipeline (shopsearch.embedding.ray_pipeline) into the same cache, by content hash; the
  local embedding stage then runs over the rest and finds everything cached (0 embedded),
  so quarantine, failure records (`catalogue problems`), the shrink guard, verification,
  the atomic publish and rollback, and resume after a killed driver are the local ones;
- IVF types: the index is trained once on the driver (VectorIndex.train, a seeded sample),
  the vectors are added shard by shard in parallel Ray tasks, and the shards are merged
  (shopsearch.index.merge), giving the index a single process would build.

Ray is imported only here and in the pipeline module, never by `--engine local`."""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from indexer.build import IndexBuilder
from shopsearch.calibration_source import BuildCalibrator
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.embedders.base import Embedder
from shopsearch.embedding.cache import VectorCache
from shopsearch.embedding.journal import CrashJournal
from shopsearch.embedding.pipeline import EmbedReport, WorkItem
from shopsearch.embedding.preprocess import split_preprocess
from shopsearch.errors import ClusterError
from shopsearch.index.layout import storage_order
from shopsearch.index.merge import add_to_copy, is_ivf, merge_shards
from shopsearch.index.store import IndexStore
from shopsearch.index.vector_index import VectorIndex

log = logging.getLogger("shopsearch.ray")

#: vectors per IVF shard task (smaller jobs are added on the driver: a task costs more than it saves)
SHARD_VECTORS = 100_000


def connect(address: str | None, num_cpus: int | None = None) -> dict[str, float]:
    """Join the cluster at `address` (None: start a local Ray sized to this machine); its resources."""
    try:
        import ray
    except ImportError:
        raise ClusterError("--engine ray needs Ray: pip install 'shopsearch[ray]'") from None
    if not ray.is_initialized():
        # "local": a new instance even where `ray start` runs on this machine (None would join it)
        kwargs: dict = {"address": address} if address else {"address": "local",
                                                             "num_cpus": num_cpus or os.cpu_count()}
        try:
            ray.init(log_to_driver=False, include_dashboard=False, configure_logging=False, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ClusterError(f"cannot reach a Ray cluster at {address}: {e}") from e
    return {k: float(v) for k, v in ray.cluster_resources().items()}


def add_sharded(index: VectorIndex, ids: np.ndarray, vectors: np.ndarray, shard: int = SHARD_VECTORS) -> VectorIndex:
    """Add `vectors` to a trained, empty IVF `index` in parallel Ray tasks, one per `shard`
    consecutive ids, and merge the shards in order (the lists end up as a single add makes them)."""
    import faiss
    import ray

    # an index cloned from a served build (an update's re-add) may carry the direct map its
    # lookups by id built: IVF lists with one do not merge; it is made again on first use
    faiss.extract_index_ivf(index.faiss_index).set_direct_map_type(faiss.DirectMap.NoMap)
    # the task's function lives in a light module: a worker imports faiss, not the indexer
    task = ray.remote(max_retries=2)(add_to_copy)
    empty = ray.put(faiss.serialize_index(index.faiss_index))
    refs = [task.remote(empty, ids[i:i + shard], vectors[i:i + shard]) for i in range(0, len(ids), shard)]
    return merge_shards(index, [ray.get(r) for r in refs])


class RayIndexBuilder(IndexBuilder):
    """IndexBuilder whose embedding, and IVF adding, run on the connected Ray cluster."""

    def __init__(self, embedder: Embedder, catalogue: CatalogueStore, store: IndexStore, cache_root: Path,
                 resources: dict[str, float], models_dir: Path | None = None, batch_size: int | None = None,
                 actors: int | None = None, shard_vectors: int = SHARD_VECTORS,
                 calibrator: BuildCalibrator | None = None) -> None:
        from shopsearch.embedding.ray_pipeline import alive_node_cpus, check_shared_folder, size_for

        super().__init__(embedder, catalogue, store, cache_root, calibrator=calibrator)
        self.cache_root = Path(cache_root)
        self.sizing = size_for(resources, batch_size, actors, alive_node_cpus())
        self.models_dir = models_dir
        self.shard_vectors = shard_vectors
        self.nodes = check_shared_folder(self.cache.dir)

    def embed(self, items: list[WorkItem], batch_size: int | None = None, workers: int | None = None,
              progress: bool = True, executor: str = "auto", chunk_size: int = 512,
              compile: str | None = None) -> EmbedReport:
        from shopsearch.embedders import load_embedder
        from shopsearch.embedding.ray_pipeline import embed_on_ray

        held = CrashJournal(self.cache.dir).quarantined()  # reported by the local stage below
        seen: set[str] = set()
        todo = [it for it in items if it.key not in self.cache and it.key not in held
                and not (it.key in seen or seen.add(it.key))]  # type: ignore[func-returns-value]
        sizing = self.sizing if batch_size is None else replace(self.sizing, batch_size=batch_size)
        device = "cuda" if sizing.gpus_per_actor else "cpu"
        make = functools.partial(load_embedder, self.embedder.name, device, self.models_dir)
        preprocess = split_preprocess(self.embedder) or self.embedder.preprocess
        log.info("embedding on ray", extra={"todo": len(todo), "nodes": self.nodes, "actors": sizing.actors,
                                            "cpus_per_actor": sizing.cpus_per_actor, "fused": sizing.fused,
                                            "batch_size": sizing.batch_size, "gpus_per_actor": sizing.gpus_per_actor})
        remote = embed_on_ray(todo, make, preprocess, self.cache.dir, sizing, progress)
        self.cache = VectorCache(self.cache_root, self.embedder.fingerprint, self.embedder.dim)  # the workers' chunks
        failed = {it.key: reason for it, reason in remote.failed}
        for it in items:
            if it.key in failed and it.image_id is not None:
                self.catalogue.mark_image_failed(it.image_id, failed[it.key])
        # everything else is cached now (or quarantined): the local stage embeds nothing
        rest = super().embed([it for it in items if it.key not in failed], batch_size, workers, False, executor,
                             chunk_size, compile)
        return EmbedReport(embedded=remote.embedded + rest.embedded, skipped=len(items) - len(todo),
                           failed=remote.failed + rest.failed, seconds=remote.seconds + rest.seconds)

    def _new_index(self, itype: str, ids: list[int], keys: list[str], fallback: VectorIndex | None = None,
                   index: VectorIndex | None = None) -> VectorIndex:
        """As the local builder's, with an IVF index's vectors added in shards on the cluster;
        `index`: a trained, emptied index to fill (an update's re-add keeps its training)."""
        if not is_ivf(itype, self.embedder.dim, len(ids)) or len(ids) < 2 * self.shard_vectors:
            return super()._new_index(itype, ids, keys, fallback, index)
        trained = index is not None
        index = index if trained else VectorIndex(self.embedder.dim, itype, expected_size=len(ids))
        ids, keys = storage_order(ids, keys, self.catalogue.filter_columns())  # as the base builder's
        vectors = self._vectors(ids, keys, fallback)
        if not trained:
            index.train(vectors)  # once, on the driver, on VectorIndex's seeded sample
        return add_sharded(index, np.array(ids, dtype=np.int64), vectors, self.shard_vectors)
