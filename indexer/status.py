"""How far the serving index lags the catalogue (`shopsearch index status`).

The quick check (the default of the CLI) answers from two numbers when the catalogue
generation has not moved since the serving build was made or checked (one COUNT of the
unusable images besides); otherwise it reads counts and image ids from the database as
plain rows and compares them with the ids the serving build records, in numpy: what is
missing and what is stale, in well under a second at a million images. It reads no file
and no content hash, so a file replaced on disk or an image re-imported with new content
is only seen by the deep check (`deep=True`, `--deep`): every image's content hash
against the build's, and every file's size and mtime against the catalogue's record."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from shopsearch.catalogue.store import CatalogueStore
from shopsearch.index.store import IndexStore
from indexer.diff import diff_index


@dataclass(frozen=True)
class IndexStatus:
    build_id: str | None
    model: str | None
    index_type: str | None
    indexed: int  # vectors in the serving build
    catalogue_images: int  # indexable (status ok) catalogue images
    missing: int  # in the catalogue, not in the index: `index update` embeds them
    stale: int  # in the index, no longer in the catalogue: `index update` removes them
    changed: int | None  # in both, the image's content hash differs (None: not checked, quick status)
    failed_images: int  # catalogue images that cannot be indexed (missing or invalid files)
    previous_build: str | None
    up_to_date: bool  # nothing to do as far as was checked (the quick check: ids only)
    files_changed_on_disk: int | None = 0  # size/mtime moved since hashed (None: not checked, quick status)
    degraded: str | None = None  # why the previous build is served instead of CURRENT's
    deep: bool = True  # content hashes and files checked too

    def to_dict(self) -> dict:
        return asdict(self)


def index_status(catalogue: CatalogueStore, store: IndexStore, deep: bool = True) -> IndexStatus:
    """Compare the serving build with the catalogue's indexable images: ids only (quick), or
    ids, content hashes and files on disk (`deep`)."""
    return _deep_status(catalogue, store) if deep else _quick_status(catalogue, store)


def _quick_status(catalogue: CatalogueStore, store: IndexStore) -> IndexStatus:
    manifest = store.current_manifest()
    if manifest is not None and not store.degraded \
            and catalogue.build_generation(manifest.build_id) == catalogue.generation():
        # the serving build holds exactly the catalogue's indexable images (the generation has
        # not moved since it was built or checked): one COUNT, no id is read
        return IndexStatus(manifest.build_id, manifest.model_name, manifest.index_type, manifest.count,
                           manifest.count, 0, 0, None, catalogue.unusable_count(), store.previous_id(), True, None,
                           deep=False)
    stats = catalogue.stats()  # COUNT queries
    want = catalogue.ok_image_ids()
    manifest = store.current_manifest()
    if manifest is None:
        return IndexStatus(None, None, None, 0, len(want), len(want), 0, None, stats.images_failed,
                           store.previous_id(), not len(want), None, deep=False)
    have = store.served_ids(manifest.build_id)
    missing = len(np.setdiff1d(want, have, assume_unique=True))
    stale = len(np.setdiff1d(have, want, assume_unique=True))
    return IndexStatus(manifest.build_id, manifest.model_name, manifest.index_type, manifest.count, len(want),
                       missing, stale, None, stats.images_failed, store.previous_id(),
                       not (missing or stale), None, degraded=store.degraded, deep=False)


def _deep_status(catalogue: CatalogueStore, store: IndexStore) -> IndexStatus:
    # here, not at the top: the quick status (every `index status`) needs neither the
    # importers (PIL, worker pools) nor the index builder (FAISS, the embedding pipeline)
    from shopsearch.catalogue.rescan import stat_moved

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
