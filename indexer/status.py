"""How far the serving index lags the catalogue (`shopsearch index status`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from shopsearch.catalogue.rescan import stat_moved
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.index.store import IndexStore
from indexer.build import diff_index


@dataclass(frozen=True)
class IndexStatus:
    build_id: str | None
    model: str | None
    index_type: str | None
    indexed: int  # vectors in the serving build
    catalogue_images: int  # indexable (status ok) catalogue images
    missing: int  # in the catalogue, not in the index: `index update` embeds them
    stale: int  # in the index, no longer in the catalogue: `index update` removes them
    changed: int  # in both, the image's content hash differs: re-embedded by `index update`
    failed_images: int  # catalogue images that cannot be indexed (missing or invalid files)
    previous_build: str | None
    up_to_date: bool
    files_changed_on_disk: int = 0  # size/mtime moved since hashed: `index update` re-checks them
    degraded: str | None = None  # why the previous build is served instead of CURRENT's

    def to_dict(self) -> dict:
        return asdict(self)


def index_status(catalogue: CatalogueStore, store: IndexStore) -> IndexStatus:
    """Compare the serving build's ids and content hashes with the catalogue's indexable images."""
    stats = catalogue.stats()
    images = catalogue.images()  # one query for both: indexable ones are those with status ok
    want = {img.id: img.sha256 or "" for img in images if img.status == "ok"}
    on_disk = sum(stat_moved(img) for img in images)  # stat only, nothing is read
    manifest = store.current_manifest()
    degraded = store.degraded
    if manifest is None:
        return IndexStatus(None, None, None, 0, len(want), len(want), 0, 0, stats.images_failed,
                           store.previous_id(), not want, on_disk)
    d = diff_index(want, store.load_keys(manifest.build_id))
    return IndexStatus(manifest.build_id, manifest.model_name, manifest.index_type, manifest.count, len(want),
                       len(d.added), len(d.removed), len(d.changed), stats.images_failed,
                       store.previous_id(), not (d.added or d.removed or d.changed or on_disk), on_disk,
                       degraded=degraded)
