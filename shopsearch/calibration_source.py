"""Where a build's confidence calibration comes from.

A shop that once named labelled shopper photos (`shopsearch index calibrate --photos`, or the
demo's validation split) has them remembered beside the index (a CSV of photo paths and SKUs,
never the photos), so every later full build, compaction or model switch refits on them; without
it a rebuild would quietly fall back to the catalogue-only fit, which is the less trustworthy one.
"""
from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from shopsearch.catalogue.store import CatalogueStore
from shopsearch.confidence import Calibration
from shopsearch.confidence_fit import calibrate_build
from shopsearch.embedders.base import Embedder
from shopsearch.errors import ManifestError
from shopsearch.labelled_photos import load_labelled_photos, read_labelled_csv
from shopsearch.rerank import RerankOptions

log = logging.getLogger("shopsearch.calibration")

#: the remembered labelled photos, in the index directory (written by remember_photos)
PHOTOS_FILE = "calibration_photos.csv"


def remember_photos(index_dir: Path, rows: Sequence[tuple[Path, str]]) -> Path:
    """Store (photo path, sku) rows for later builds' calibrations; written whole or not at all."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image", "sku"])
    w.writerows((str(Path(p).resolve()), sku) for p, sku in rows)
    path = Path(index_dir) / PHOTOS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    os.replace(tmp, path)
    return path


def forget_photos(index_dir: Path) -> bool:
    """Go back to catalogue-only calibrations; True when photos were remembered."""
    path = Path(index_dir) / PHOTOS_FILE
    if not path.is_file():
        return False
    path.unlink()
    return True


def remembered_photos(index_dir: Path) -> list[tuple[Path, str]] | None:
    """The remembered rows, or None when there are none (or the file no longer parses: logged)."""
    path = Path(index_dir) / PHOTOS_FILE
    if not path.is_file():
        return None
    try:
        return read_labelled_csv(path)
    except ManifestError as e:
        log.warning("remembered calibration photos unusable, calibrating on the catalogue", extra={"error": str(e)})
        return None


@dataclass(frozen=True)
class LabelledSource:
    """Labelled photos to embed with the build's model, and how the serving search fuses the head."""
    rows: tuple[tuple[Path, str], ...]
    embedder: Embedder
    catalogue: CatalogueStore
    cache_root: Path
    fusion: Callable[[], Any] = lambda: None  # -> confidence_fit.FusedRanking | None, read at fit time


class BuildCalibrator:
    """Fits the calibration of a build (IndexBuilder's collaborator): on the remembered labelled
    photos when there are usable ones, else on the catalogue's own held-out photos."""

    def __init__(self, rerank: RerankOptions = RerankOptions(), labelled: LabelledSource | None = None) -> None:
        self.rerank = rerank  # the searches' default re-ranking: the calibration is fitted on its scores
        self.labelled = labelled

    def fit(self, index: Any, images: Sequence[Any], build_id: str) -> Calibration:
        src = self.labelled
        if src is not None:
            photos = load_labelled_photos(src.rows, src.embedder, src.catalogue, src.cache_root, progress=False)
            if photos.unreadable:
                log.warning("calibration photos skipped", extra={"count": len(photos.unreadable),
                                                                 "first": photos.unreadable[0]})
            if photos.queries:
                return calibrate_build(index, images, build_id, self.rerank, photos.queries, fusion=src.fusion())
            log.warning("no remembered calibration photo is readable: calibrating on the catalogue",
                        extra={"rows": len(src.rows)})
        return calibrate_build(index, images, build_id, self.rerank)
