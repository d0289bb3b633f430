"""The typed values an index build takes and gives: its options, its plan and its report."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from indexer.shrink import DEFAULT_MAX_SHRINK

if TYPE_CHECKING:  # the CLI imports this module for BuildOptions; the catalogue only when it runs
    from shopsearch.catalogue.rescan import RescanReport
    from shopsearch.index.manifest import IndexManifest


@dataclass(frozen=True)
class BuildOptions:
    """Everything `index build` / `index update` can be told, made once by the CLI."""

    #: auto | flat | hnsw | ivfpq | a FAISS factory string | keep (the serving build's type when it
    #: was asked for by name, else auto: resolve_index_type)
    index_type: str = "auto"
    batch_size: int | None = None
    workers: int | None = None
    progress: bool = True
    executor: str = "auto"
    chunk_size: int = 512
    rescan: bool = True  # stat the files first and re-hash what moved
    compile: str | None = None
    verify_hashes: bool = False  # re-hash every file, not only the moved ones
    max_shrink: float | None = DEFAULT_MAX_SHRINK
    force: bool = False  # build: even when up to date; update: compact into a fresh base
    #: per-domain mean centring (shopsearch.centring): "keep" what the serving build does, "on"
    #: (means fitted anew), "off". An update always keeps the serving build's means.
    centre: str = "keep"
    #: catalogue adaptation of a centred build (shopsearch.centring.adapt_gallery): "auto" (on
    #: for an iconic-only catalogue, about one image per product, when a shopper sample is
    #: given; else as the serving build), "on", "off"
    adapt: str = "auto"
    #: synthetic shopper views blended into each catalogue vector (indexer/views_build.py):
    #: "auto" (on for an iconic-only catalogue, about one image per product), "on", "off"
    views: str = "auto"
    #: what the rescan stats: "auto" (folders, the files of those that moved, and a rolling
    #: window of the rest: a file rewritten in place is seen within 16 rescans), "files" (every
    #: file) or "dirs" (no window: blind to rewrites in place); shopsearch/catalogue/stat_snapshot.py
    rescan_scope: str = "auto"


@dataclass(frozen=True)
class BuildPlan:
    """What a build is about to do; printed (memory estimate included) before any work."""

    images: int
    index_type: str
    estimated_bytes: int
    dim: int


@dataclass(frozen=True)
class UpdateChanges:
    """What an update applied to the serving build."""

    #: the build serving before this run's: the one updated, or where the run found the serving
    #: build up to date (no new build) the one before it (what `index rollback` serves), None when none
    previous_build: str | None
    added: int
    changed: int
    removed: int
    unchanged: int
    rebuild_reason: str | None  # why the index was rebuilt or re-filled (None: changed in place)
    added_since_training: int  # vectors added since an IVF index was trained


@dataclass(frozen=True)
class SegmentCounts:
    """The published build's segments (shopsearch/index/segments.py)."""

    base: int  # vectors in the base segment, tombstoned ones included
    delta: int
    dead: int

    @classmethod
    def of(cls, m: IndexManifest) -> SegmentCounts:
        return cls(m.base_count or m.count, m.delta_count, m.dead_count)


@dataclass(frozen=True)
class BuildReport:
    build_id: str
    model: str
    fingerprint: str
    index_type: str
    vectors: int
    embedded: int
    #: vectors taken from the vector cache instead of embedded (a compaction's: every vector it
    #: did not embed; a delta's: its new or changed images found there)
    reused: int
    failed: tuple[tuple[int | None, str, str], ...]
    seconds: float
    images_per_s: float
    estimated_bytes: int = 0
    mode: str = "full"  # full | delta | rebuild | up-to-date
    trained_on: int = 0  # vectors the index was (last) trained or built on
    rescan: RescanReport | None = None  # the files found changed on disk first
    update: UpdateChanges | None = None  # an update's changes (None for a full build)
    up_to_date: bool = False  # nothing changed: no index work, no new build (build_id is the serving one)
    strategy: str = "full"  # full, or indexer.update_plan's UP_TO_DATE | DELTA | READD | REBUILD
    segments: SegmentCounts | None = None
    adapt_rounds: int = 0  # rounds of catalogue adaptation in the published vectors (0: none)
    shopper_views: int = 0  # synthetic shopper views blended into each published catalogue vector
    recall_probe: dict | None = None  # an HNSW build's recall probe (shopsearch.index.recall_probe), else None

    def to_dict(self) -> dict:
        d = {
            "build_id": self.build_id, "model": self.model, "fingerprint": self.fingerprint,
            "index_type": self.index_type, "vectors": self.vectors, "embedded": self.embedded,
            "reused": self.reused, "failed": [{"image_id": i, "path": p, "reason": r} for i, p, r in self.failed],
            "seconds": round(self.seconds, 3), "images_per_s": round(self.images_per_s, 2),
            "estimated_bytes": self.estimated_bytes, "mode": self.mode,
        }
        if self.update is not None:
            u = self.update
            d |= {"rebuild_reason": u.rebuild_reason, "previous_build": u.previous_build, "added": u.added,
                  "changed": u.changed, "removed": u.removed, "unchanged": u.unchanged}
        d["trained_on"] = self.trained_on
        if self.update is not None:
            d["added_since_training"] = self.update.added_since_training
        d["rescan"] = self.rescan.to_dict() if self.rescan else None
        s = self.segments
        d |= {"up_to_date": self.up_to_date, "strategy": self.strategy,
              "segments": {"base": s.base, "delta": s.delta, "dead": s.dead} if s else None,
              "adapt_rounds": self.adapt_rounds, "shopper_views": self.shopper_views,
              "recall_probe": self.recall_probe}
        return d


def resolve_index_type(requested: str, serving: "IndexManifest | None") -> tuple[str, str]:
    """(index type to build, how it was chosen: "auto" | "fixed") for `--index requested`: "keep"
    is the serving build's type when that was asked for by name (a rebuild or update never undoes an
    explicit choice), else "auto"; "auto" follows the catalogue's size; any other is fixed."""
    if requested == "keep":
        if serving is not None and serving.index_choice == "fixed":
            return serving.index_type, "fixed"
        return "auto", "auto"
    return requested, "auto" if requested == "auto" else "fixed"


def resolve_options(options: BuildOptions | None, overrides: dict[str, Any]) -> BuildOptions:
    """`options` (defaults when None) with keyword overrides: `build(progress=False)` still reads well."""
    return replace(options or BuildOptions(), **overrides)
