"""How far the serving index lags the catalogue (`shopsearch index status`).

The quick check (the default of the CLI) answers from two numbers when the catalogue
generation has not moved since the serving build was made or checked (one COUNT of the
unusable images besides); otherwise it reads counts and image ids from the database as
plain rows and compares them with the ids the serving build records, in numpy: what is
missing and what is stale, in well under a second at a million images. It reads no file
and no content hash; it stats the image folders only, against the stat snapshot of the last
rescan (shopsearch/catalogue/stat_snapshot.py: files added, deleted or renamed there). A
file rewritten in place or an image re-imported with new content is seen by the deep check
(`deep=True`, `--deep`): every image's content hash against the build's, and every file's
size and mtime against the catalogue's record (as arrays: no object per image)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from shopsearch.catalogue.store import CatalogueStore
from shopsearch.index.manifest import IndexManifest
from shopsearch.index.store import IndexStore
from indexer.diff import diff_arrays
from shopsearch.catalogue.stat_snapshot import SNAPSHOT_FILE, StatSnapshot


@dataclass(frozen=True)
class IndexStatus:
    build_id: str | None
    model: str | None
    index_type: str | None
    vectors: int  # in the serving build
    images_ok: int  # indexable (status ok) catalogue images
    missing: int  # in the catalogue, not in the index: `index update` embeds them
    stale: int  # in the index, no longer in the catalogue: `index update` removes them
    changed: int | None  # in both, the image's content hash differs (None: not checked, quick status)
    images_failed: int  # catalogue images that cannot be indexed (missing or invalid files)
    previous_build: str | None
    up_to_date: bool  # nothing to do as far as was checked (the quick check: ids only)
    files_changed_on_disk: int | None = 0  # size/mtime moved since hashed (None: not checked, quick status)
    degraded: str | None = None  # why the previous build is served instead of CURRENT's
    deep: bool = True  # content hashes and files checked too
    #: quick status: image folders whose mtime moved since the last rescan (files added, deleted or
    #: renamed there, maybe images; None: no current stat snapshot). A hint, not part of up_to_date:
    #: other files come and go in folders too. Files rewritten in place show only in --deep.
    folders_changed_on_disk: int | None = None
    #: the serving HNSW build's recall probe (shopsearch.index.recall_probe: efSearch chosen and
    #: recall@10 measured at build time); None for other index types and builds made without one
    recall_probe: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def index_status(catalogue: CatalogueStore, store: IndexStore, deep: bool = True) -> IndexStatus:
    """Compare the serving build with the catalogue's indexable images: ids only (quick), or
    ids, content hashes and files on disk (`deep`)."""
    return _deep_status(catalogue, store) if deep else _quick_status(catalogue, store)


def _quick_status(catalogue: CatalogueStore, store: IndexStore) -> IndexStatus:
    manifest = store.current_manifest()
    generation = catalogue.generation()
    folders = StatSnapshot.folders_moved(store.root / SNAPSHOT_FILE, generation, catalogue.source())
    if manifest is not None and not store.degraded and catalogue.build_generation(manifest.build_id) == generation:
        # the serving build holds exactly the catalogue's indexable images (the generation has
        # not moved since it was built or checked): one COUNT, no id is read
        return IndexStatus(manifest.build_id, manifest.model_name, manifest.index_type, manifest.count,
                           manifest.count, 0, 0, None, catalogue.unusable_count(), store.previous_id(), True,
                           None, deep=False, folders_changed_on_disk=folders, recall_probe=_probe(manifest))
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
                       not (missing or stale), None, degraded=store.degraded, deep=False,
                       folders_changed_on_disk=folders, recall_probe=_probe(manifest))


def _deep_status(catalogue: CatalogueStore, store: IndexStore) -> IndexStatus:
    stats = catalogue.stats()
    # every file against the database's record (not the stored snapshot: this is the full check),
    # and ids and content hashes against the build's, all as arrays: no object per image
    rows = StatSnapshot.from_rows(catalogue.image_stats(), catalogue.generation(), catalogue.source())
    on_disk = len(rows.moved())  # stat only, nothing is read
    want_ids, want_keys = catalogue.indexable_keys()
    manifest = store.current_manifest()
    degraded = store.degraded
    if manifest is None:
        return IndexStatus(None, None, None, 0, len(want_ids), len(want_ids), 0, 0, stats.images_failed,
                           store.previous_id(), not len(want_ids), on_disk)
    d = diff_arrays(want_ids, want_keys, *store.served_keys(manifest.build_id))
    return IndexStatus(manifest.build_id, manifest.model_name, manifest.index_type, manifest.count, len(want_ids),
                       len(d.added), len(d.removed), len(d.changed), stats.images_failed,
                       store.previous_id(), not (d.added or d.removed or d.changed or on_disk), on_disk,
                       degraded=degraded, recall_probe=_probe(manifest))


def _probe(manifest: IndexManifest) -> dict | None:
    return dict(manifest.recall_probe) if manifest.recall_probe else None
