"""Catalogue imports: the readers (readers.py: CSV/JSONL manifests, ImageFolder trees, the
Grocery Store layout) yield ProductRecords; `import_catalogue` checks every image (exists,
decodes, hash, size) in worker processes and upserts. A bad row or image is reported
and skipped, never aborting the run; re-importing unchanged data writes nothing."""
from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Iterator

from tqdm import tqdm

from shopsearch.catalogue.downloads import ImageDownloader, is_url, mask_url
from shopsearch.catalogue.records import ImageRecord, ProductRecord, UpsertResult
from shopsearch.catalogue.row_digest import current_digest
from shopsearch.catalogue.store import UPSERT_BATCH, CatalogueStore
from shopsearch.catalogue.readers import RowProblem
from shopsearch.errors import (InvalidImageError, ManifestError, NoUsableImagesError, NothingImportedError,
                               ShopSearchError)
from shopsearch.images import inspect_image
from shopsearch.workers import RespawningPool, exit_with_parent

log = logging.getLogger("shopsearch.importer")

#: image files per task sent to a checking process: few enough round trips that passing them costs
#: little beside the decoding (a task whose worker dies is run again one file at a time)
CHECK_CHUNK = 256


@dataclass
class ImportReport:
    products_created: int = 0
    products_updated: int = 0
    products_unchanged: int = 0
    images_added: int = 0
    images_failed: int = 0
    images_ok: int = 0  # usable images in the source, new or already known
    images_removed: int = 0  # no longer named by their product's row: deleted from the catalogue
    images_decoded: int = 0  # files opened, decoded and hashed (new, or their size or mtime moved)
    images_unchanged: int = 0  # known files whose size and mtime had not moved: not read at all
    images_downloaded: int = 0  # image URLs fetched by this import (those already downloaded are not)
    #: SKUs whose row named another set of images than the catalogue held (the old ones removed)
    images_replaced: list[str] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)

    def failure(self) -> ShopSearchError | None:
        """Why the import failed, for its caller to raise once the report is shown: no row gave
        a product, or every image named was unusable (the products are written, without an
        image to index); None when it did its work."""
        products = self.products_created + self.products_updated + self.products_unchanged
        problems = f"{len(self.problems)} problem(s) reported"
        if products == 0:
            return NothingImportedError(f"nothing was imported: no row gave a product ({problems})")
        if self.images_failed and not self.images_ok:
            return NoUsableImagesError(
                f"no usable image: every image named was missing or unusable, so the {products} product(s) "
                f"imported have no image to index ({problems}); fix the paths or files and import again")
        return None

    def to_dict(self) -> dict:
        return {
            "products_created": self.products_created, "products_updated": self.products_updated,
            "products_unchanged": self.products_unchanged, "images_added": self.images_added,
            "images_failed": self.images_failed, "images_ok": self.images_ok,
            "images_removed": self.images_removed, "images_decoded": self.images_decoded,
            "images_unchanged": self.images_unchanged, "images_downloaded": self.images_downloaded,
            "images_replaced": list(self.images_replaced),
            "problems": [{"where": p.where, "sku": p.sku, "reason": p.reason, "kind": p.kind}
                         for p in self.problems],
        }


# -- checking and upserting ------------------------------------------------------
def check_image_file(path: str) -> tuple[str, ImageRecord | str]:
    """Worker: inspect one image; returns the filled record or the reason it failed."""
    try:
        m = inspect_image(path)
        return path, ImageRecord(path, sha256=m.sha256, width=m.width, height=m.height,
                                 file_size=m.file_size, file_mtime_ns=m.file_mtime_ns)
    except InvalidImageError as e:
        return path, str(e)
    except OSError as e:  # permission errors and the like
        return path, f"cannot read: {e}"
    except Exception as e:  # noqa: BLE001 - one file must never abort the whole import
        return path, f"cannot check the image: {type(e).__name__}: {e}"


def _check_group(paths: list[str]) -> list[tuple[str, ImageRecord | str]]:
    return [check_image_file(p) for p in paths]


def check_image_files(paths: list[str], workers: int = 2, progress: bool = True,
                      desc: str = "checking images") -> dict[str, ImageRecord | str]:
    """check_image_file over many paths, in `workers` processes unless `workers` is 1."""
    return dict(iter_image_checks(paths, workers, progress, desc))


def iter_image_checks(paths: list[str], workers: int = 2, progress: bool = True,
                      desc: str = "checking images") -> Iterator[tuple[str, ImageRecord | str]]:
    """(path, check_image_file's result) in the order of `paths`, as the workers finish them:
    every task is queued at once, so the workers go on checking while the caller writes what
    it has been given (an import upserts one batch while the next ones are being checked)."""
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress or not paths)
    try:
        if workers > 1 and paths:
            # Processes even for a handful of files: a decoder crashing on one of them would
            # otherwise take the import down, and every retry with it. A worker that dies on a
            # file is replaced and the file reported as invalid (shopsearch.workers).
            pool: RespawningPool[str, tuple[str, ImageRecord | str]] = RespawningPool(
                # a killed or terminated import leaves no checking processes behind
                lambda: ProcessPoolExecutor(workers, initializer=exit_with_parent), _check_group,
                lambda path, why: (path, why))
            try:
                for fut in [pool.submit(paths[i:i + CHECK_CHUNK]) for i in range(0, len(paths), CHECK_CHUNK)]:
                    done = pool.result(fut)
                    bar.update(len(done))
                    yield from done
            finally:
                pool.shutdown()
        else:
            for path in paths:
                yield check_image_file(path)
                bar.update()
    finally:
        bar.close()


def unchanged_files(store: CatalogueStore, paths: list[str]) -> dict[str, ImageRecord]:
    """The files the catalogue already knows as usable whose size and mtime have not moved
    since they were hashed: their recorded hash and size stand, nothing is read."""
    known = store.image_files(paths)
    out = {}
    for path, rec in known.items():
        try:
            st = os.stat(path)
        except OSError:
            continue
        if (st.st_size, st.st_mtime_ns) == (rec.file_size, rec.file_mtime_ns):
            out[path] = rec
    return out


def _checked_record(rec: ProductRecord, checked: dict[str, ImageRecord | str], report: ImportReport,
                    origin: dict[str, str]) -> ProductRecord:
    """`rec` with each image's check result: the file's facts, or the reason it is unusable (reported
    under the name the source gave it: a downloaded file's URL, from `origin`)."""
    images = []
    for im in rec.images:
        res = checked[im.path]
        if isinstance(res, str):
            report.images_failed += 1
            where = origin.get(im.path, im.path)  # a URL's password is never shown
            report.problems.append(RowProblem(mask_url(where) if is_url(where) else where, rec.sku, res,
                                              kind="image"))
            # Recorded (not dropped) so the product page and `stats` can show it; never indexed. A URL
            # that failed is stored under its name with the password masked (the next import retries
            # the manifest's URL); URLs that differ only in their password are one image then.
            status = "missing" if res.startswith("no such file") else "invalid"
            path = mask_url(im.path) if is_url(im.path) else im.path
            if path != im.path and any(done.path == path for done in images):
                continue
            images.append(replace(im, path=path, status=status, error=res))
        else:
            report.images_ok += 1
            images.append(res if res.role == im.role else replace(res, role=im.role))
    # the constructor, not dataclasses.replace: this runs once per row of a million-row manifest
    return ProductRecord(rec.sku, rec.title, rec.description, rec.brand, rec.price, rec.currency,
                         rec.category_path, rec.attributes, tuple(images), rec.keep)


def _count(report: ImportReport, result: UpsertResult) -> None:
    report.images_added += result.images_added
    report.images_removed += result.images_removed
    if result.images_removed:
        report.images_replaced.append(result.sku)
    if result.created:
        report.products_created += 1
    elif result.changed:
        report.products_updated += 1
    else:
        report.products_unchanged += 1


def _skip_unchanged_rows(store: CatalogueStore, records: list[ProductRecord],
                         report: ImportReport) -> tuple[list[ProductRecord], list[tuple[int, ProductRecord]]]:
    """(the records left to check and upsert, (product id, record) of those skipped): a row
    whose digest (its data, its files' path, size and mtime) is the one stored with its
    product is unchanged, counted as such and never looked at again; no file is read."""
    known = store.row_digests()
    if not known:  # a first import: nothing to compare, not even a stat
        return records, []
    rest, skipped = [], []
    for rec in records:
        stored = known.get(rec.sku)
        if stored is not None and stored[1] == current_digest(rec):
            skipped.append((stored[0], rec))
            report.products_unchanged += 1
            report.images_ok += len(rec.images)
        else:
            rest.append(rec)
    return rest, skipped


@dataclass(frozen=True)
class _Localised:
    """What downloading a source's image URLs made of its records."""

    records: list[ProductRecord]  # each downloaded URL replaced by its file
    failed: dict[str, str]  # url -> why (it stays a URL, recorded as unusable with that reason)
    origin: dict[str, str]  # file -> the URL it came from (problems name the URL)
    fresh: dict[str, ImageRecord]  # file -> its check, for the files this run downloaded (not read again)


def _localise(records: list[ProductRecord], downloader: ImageDownloader | None, refresh: bool, progress: bool,
              report: ImportReport, workers: int) -> _Localised:
    """Download the records' image URLs (each new file checked in `workers` processes before it
    takes its name). A refresh that fails keeps the earlier file, reported as a "download" problem."""
    urls = [im.path for r in records for im in r.images if is_url(im.path)]
    if not urls:
        return _Localised(records, {}, {}, {})
    if downloader is None:
        return _Localised(records, {u: "download failed: image URLs are not downloaded by this import"
                                    for u in urls}, {}, {})
    fetched = downloader.fetch_all(urls, refresh=refresh, progress=progress,
                                   check=lambda paths: check_image_files(paths, workers, progress=False))
    report.images_downloaded = sum(res.downloaded for res in fetched.values())
    failed = {u: f"download failed: {res.error}" for u, res in fetched.items() if res.path is None}
    out = []
    for r in records:
        if any(is_url(im.path) and im.path not in failed for im in r.images):
            for u in dict.fromkeys(im.path for im in r.images if is_url(im.path) and fetched[im.path].kept):
                report.problems.append(RowProblem(mask_url(u), r.sku, f"download failed: {fetched[u].error}; "
                                                  "the previous image was kept", kind="download"))
            r = replace(r, images=tuple(replace(im, path=str(fetched[im.path].path)) if is_url(im.path)
                                        and im.path not in failed else im for im in r.images))
        out.append(r)
    origin = {str(res.path): u for u, res in fetched.items() if res.path is not None}
    fresh = {str(res.path): res.record for res in fetched.values() if res.record is not None}
    return _Localised(out, failed, origin, fresh)


def import_catalogue(store: CatalogueStore, records: Iterable[ProductRecord], problems: list[RowProblem] | None = None,
                     workers: int = 2, progress: bool = True,
                     on_product: Callable[[int, ProductRecord], None] | None = None,
                     strict: bool = False, downloader: ImageDownloader | None = None,
                     refresh_downloads: bool = False) -> ImportReport:
    """Check the images (in `workers` processes) and upsert the products, UPSERT_BATCH per
    transaction, each batch written while the workers check the next batches' files. A file the catalogue already holds with the same size and mtime is not read
    again; a row naming other images than the catalogue holds replaces the product's image set
    (`images_replaced`; their vectors leave the index at the next update). A SKU on several
    rows is imported once, from its last row (the readers report the others); `strict`
    refuses the whole source (ManifestError, nothing written) when any row was unreadable
    or a duplicate. Images named by URL are downloaded first by `downloader` (once: a file already
    downloaded is used as it is unless `refresh_downloads`); without one they are unusable."""
    report = ImportReport(problems=problems if problems is not None else [])
    # one upsert per SKU: several would each count as an update at every re-import
    records = list({r.sku: r for r in records}.values())
    refused = [p for p in report.problems if p.kind in ("row", "duplicate")]
    if strict and refused:
        listed = "; ".join(f"{p.where}: {p.reason}" for p in refused[:10])
        more = f"; and {len(refused) - 10} more" if len(refused) > 10 else ""
        raise ManifestError(f"refused (--strict), nothing imported: {len(refused)} problem row(s): {listed}{more}")
    local = _localise(records, downloader, refresh_downloads, progress, report, workers)
    records, failed_urls, origin = local.records, local.failed, local.origin
    records, skipped = _skip_unchanged_rows(store, records, report)
    if on_product is not None:
        for pid, rec in skipped:
            on_product(pid, rec)
    paths = sorted({im.path for r in records for im in r.images})
    checked: dict[str, ImageRecord | str] = dict(unchanged_files(store, [p for p in paths if p not in failed_urls]))
    skipped_paths = {im.path for _, r in skipped for im in r.images}.difference(paths)
    report.images_unchanged = len(checked) + len(skipped_paths)
    checked.update((u, why) for u, why in failed_urls.items() if u in paths)
    # files this run downloaded were decoded and hashed before they took their names: not again
    fresh = {p: local.fresh[p] for p in paths if p in local.fresh and p not in checked}
    checked.update(fresh)
    # the files to read in the order the batches name them: each batch is written as soon as its
    # own files are checked, while the workers go on with the next ones
    todo = [p for p in dict.fromkeys(im.path for r in records for im in r.images) if p not in checked]
    report.images_decoded = len(todo) + len(fresh)
    checks = iter_image_checks(todo, workers, progress)
    bar = tqdm(total=len(records), desc="importing products", unit="product", disable=not progress)
    try:
        for start in range(0, len(records), UPSERT_BATCH):
            chunk = records[start:start + UPSERT_BATCH]
            for rec in chunk:
                for im in rec.images:
                    while im.path not in checked:  # the checks come in `todo` order
                        path, res = next(checks)
                        checked[path] = res
            batch = [_checked_record(rec, checked, report, origin) for rec in chunk]
            for rec, result in zip(batch, store.upsert_products(batch)):
                _count(report, result)
                if on_product is not None:
                    on_product(result.product_id, rec)
            bar.update(len(batch))
    finally:
        checks.close()  # the workers stop (a failed batch leaves the rest unchecked)
        bar.close()
    for p in report.problems:
        # the caller reports them to the user (the report's problems): a log line at INFO only
        log.info("import problem", extra={"where": p.where, "sku": p.sku, "reason": p.reason})
    return report
