"""Manifest readers: CSV/JSONL manifests, ImageFolder trees, the Grocery Store layout, each
yielding ProductRecords (importers.py checks their images and upserts them). A row that
cannot be read is reported as a RowProblem and skipped."""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from shopsearch.catalogue.cells import (BRAND_CHARS, CATEGORY_CHARS, IMAGE_PATH_CHARS, SKU_CHARS, TITLE_CHARS, category,
                                        image_list, price, text_cell)
from shopsearch.catalogue.downloads import check_url, is_url
from shopsearch.catalogue.formats import FORMATS
from shopsearch.catalogue.records import ImageRecord, ProductRecord
from shopsearch.errors import ManifestError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif"}
_CORE = {"sku", "title", "name", "description", "brand", "price", "currency", "category", "image", "images"}
#: the product fields a manifest's columns give, and which columns give each
_FIELD_COLUMNS = {"title": ("title", "name"), "description": ("description",), "brand": ("brand",),
                  "price": ("price",), "currency": ("currency",)}


def _absent(columns) -> frozenset[str]:
    """The product fields that a manifest with these columns (a CSV header, a JSONL object's keys)
    does not give: a re-import leaves them as they are (ProductRecord.keep)."""
    cols = set(columns)
    keep = [f for f, names in _FIELD_COLUMNS.items() if cols.isdisjoint(names)]
    if all(c in _CORE for c in cols):  # no other column: no attribute
        keep.append("attributes")
    return frozenset(keep)


@dataclass(frozen=True)
class RowProblem:
    where: str  # "row 12", "line 3", a path
    sku: str | None
    reason: str
    #: "row" (unreadable row), "duplicate" (a SKU already read), "image" (unusable image file),
    #: "file" (a file skipped or missing beside a usable row), "download" (a refreshed image URL that
    #: failed: the file downloaded before was kept)
    kind: str = "row"


class _SkuRows:
    """Where each SKU was read, so that a SKU on several rows is reported (kind "duplicate")."""

    def __init__(self, problems: list[RowProblem]) -> None:
        self.problems = problems
        self.first: dict[str, str] = {}

    def see(self, rec: ProductRecord, where: str) -> ProductRecord:
        earlier = self.first.setdefault(rec.sku, where)
        if earlier != where:
            # the policy (an import takes the last row, --strict refuses the file) is the caller's to say
            self.problems.append(RowProblem(where, rec.sku, f"duplicate SKU {rec.sku!r}, first on {earlier}",
                                            kind="duplicate"))
        return rec


# -- readers ------------------------------------------------------------------
def _record(row: dict, base: Path, keep: frozenset[str], decimal_comma: bool = False) -> ProductRecord:
    # runs once per row of a million-row manifest: plain lookups, no generator, no keyword arguments
    get = row.get
    sku = (text_cell(get("sku"), "sku", SKU_CHARS) or "").strip()
    if not sku:
        raise ValueError("missing sku")
    if ("/" in sku or sku[0] == ".") and {"", ".", ".."} & set(sku.split("/")):
        # /products/<sku> would name another address: browsers resolve dot segments, Flask merges "//"
        raise ValueError(f"sku {sku!r} has an empty, '.' or '..' part between slashes, so no page address can name it")
    title = (text_cell(get("title") or get("name"), "title", TITLE_CHARS) or "").strip() or sku
    many, one = get("images"), get("image")
    images = image_list(one) if many is None or many == "" else image_list(many) + image_list(one)
    for p in images:
        text_cell(p, "image path", IMAGE_PATH_CHARS)
        if is_url(p):
            check_url(p)
    attrs = {k: v for k, v in row.items() if k not in _CORE and v not in (None, "")}
    if isinstance(get("attributes"), dict):
        attrs = {**{k: v for k, v in attrs.items() if k != "attributes"}, **row["attributes"]}
    cur = get("currency")
    return ProductRecord(
        sku, title, text_cell(get("description"), "description"), text_cell(get("brand"), "brand", BRAND_CHARS),
        price(get("price"), decimal_comma), text_cell(cur, "currency").upper()[:3] if cur else None,
        category(get("category")), attrs,
        tuple([ImageRecord(p if _isabs(p) or is_url(p) else str((base / p).resolve())) for p in images]), keep)


#: os.path.isabs without its per-call str/bytes dispatch where absolute means a leading "/"
_isabs = (lambda p: p.startswith("/")) if os.sep == "/" and not os.altsep else os.path.isabs


def read_csv(path: Path, problems: list[RowProblem]) -> Iterator[ProductRecord]:
    try:
        f = open(path, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise ManifestError(f"cannot open manifest {path}: {e}") from None
    try:
        with f:
            fieldnames, reader, delimiter = _header(f, path)
            rows = _SkuRows(problems)
            base, name = path.parent, path.name  # once: pathlib computes them again at every call
            keep = _absent(fieldnames)
            # locales that separate cells with ";" (or tabs) write decimals with a comma
            decimal_comma = delimiter != ","
            for n, row in enumerate(_dict_rows(reader, fieldnames), start=2):
                try:
                    yield rows.see(_record(row, base, keep, decimal_comma), f"{name} row {n}")
                except ValueError as e:
                    problems.append(RowProblem(f"{path.name} row {n}", row.get("sku"), str(e)))
    except UnicodeDecodeError as e:  # a spreadsheet's "CSV" in Latin-1 or Windows-1252: said plainly, no traceback
        raise ManifestError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x}); save it as UTF-8 "
                            "(\"CSV UTF-8\") and import it again") from None


def _header(f, path: Path) -> tuple[list[str], Iterator[list[str]], str]:
    """The header row, a reader of the rows below it and its delimiter. Spreadsheets save "CSV" with commas,
    or semicolons or tabs in many locales; a header names its columns in any case, with spaces
    around them ("SKU", " Images"): the known columns are read in lower case, others (attributes)
    as written. ManifestError, saying what the first row holds, when no delimiter gives a sku column."""
    for delimiter in (",", ";", "\t"):
        f.seek(0)
        reader = csv.reader(f, delimiter=delimiter)
        fieldnames = [c if c.lower() not in _CORE else c.lower() for c in (c.strip() for c in next(reader, []))]
        if "sku" in fieldnames:
            return fieldnames, reader, delimiter
    f.seek(0)
    first = f.readline().strip()
    raise ManifestError(f"{path}: a CSV manifest needs a header row with a 'sku' column (the other columns, "
                        "'images' among them, are optional; values separated by commas, semicolons or tabs); "
                        + (f"its first row is {first[:200]!r}" if first else "the file is empty"))


def _dict_rows(reader: Iterator[list[str]], fieldnames: list[str]) -> Iterator[dict]:
    """What csv.DictReader yields (blank rows skipped, extra cells as a list under None, missing
    ones None), without its Python-level checks per row: a manifest of a million rows spent
    seconds there."""
    width = len(fieldnames)
    for values in reader:
        if not values:
            continue
        row = dict(zip(fieldnames, values))
        if len(values) != width:
            if len(values) > width:
                row[None] = values[width:]  # type: ignore[index]
            else:
                row.update(dict.fromkeys(fieldnames[len(values):]))
        yield row


def read_jsonl(path: Path, problems: list[RowProblem]) -> Iterator[ProductRecord]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"cannot read manifest {path}: {e}") from None
    rows = _SkuRows(problems)
    base, name = path.parent, path.name
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row = None
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("line is not a JSON object")
            if "\\ud" in line or "\\uD" in line:  # a lone surrogate escape decodes to text no database can store
                try:
                    json.dumps(row, ensure_ascii=False).encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError("a \\uD800-\\uDFFF escape without its pair is no character") from None
            yield rows.see(_record(row, base, _absent(row)), f"{name} line {n}")
        except ValueError as e:  # the SKU named as for a CSV row, where it is printable text
            sku = row.get("sku") if isinstance(row, dict) else None
            # (surrogates and control characters are not printable)
            problems.append(RowProblem(f"{path.name} line {n}", sku if isinstance(sku, str) and sku.isprintable()
                                       else None, str(e)))


#: what a folder of images says nothing about: a re-import leaves what a manifest set (prices...)
_FOLDER_KEEPS = frozenset({"description", "brand", "price", "currency", "attributes"})


def read_imagefolder(root: Path, problems: list[RowProblem]) -> Iterator[ProductRecord]:
    """root/<class>/[<subclass>/...]/<image>: one product per image, category = its folders."""
    if not root.is_dir():
        raise ManifestError(f"{root} is not a folder")
    rows = _SkuRows(problems)
    seen = 0
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        seen += 1
        if not p.is_file():
            if p.is_symlink() and not p.exists():  # a link to a file moved or deleted: said, not skipped silently
                problems.append(RowProblem(str(p.relative_to(root)), None,
                                           f"a broken link (to {os.readlink(p)}); skipped", kind="file"))
            continue
        rel = p.relative_to(root)
        if len(rel.parts) < 2:
            problems.append(RowProblem(str(rel), None, "image is not inside a class folder; skipped", kind="file"))
            continue
        try:
            # a name that is not UTF-8 (copied from an old system) cannot be stored: that file alone is skipped
            str(rel).encode("utf-8")
            sku = text_cell(rel.with_suffix("").as_posix(), "sku (the path in the folder)", SKU_CHARS)
            for part in rel.parts[:-1]:
                text_cell(part, "category (folder name)", CATEGORY_CHARS)
        except (UnicodeEncodeError, ValueError) as e:
            where = str(rel).encode("utf-8", "backslashreplace").decode("utf-8")
            reason = "file name is not valid UTF-8; rename it" if isinstance(e, UnicodeEncodeError) else str(e)
            problems.append(RowProblem(where, None, reason, kind="file"))
            continue
        rec = ProductRecord(sku=sku, title=p.stem.replace("_", " ").replace("-", " "),
                            category_path=tuple(rel.parts[:-1]), images=(ImageRecord(str(p.resolve())),),
                            keep=_FOLDER_KEEPS)
        yield rows.see(rec, str(rel))
    if not seen:  # e.g. a folder named like a manifest (`dir.csv`), or an empty one
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise ManifestError(f"{root} is a folder without any image file ({suffixes}) in it: read as an ImageFolder "
                            "tree (root/<category>/<image>), it has nothing to import; a manifest is a file")


def read_grocerystore(root: Path, problems: list[RowProblem], reference_split: str | None = None) -> Iterator[ProductRecord]:
    """One product per fine class (iconic image + description); optional shopper photos as references."""
    ds = root / "dataset" if (root / "dataset" / "classes.csv").is_file() else root
    classes = ds / "classes.csv"
    if not classes.is_file():
        raise ManifestError(f"{root} does not look like the Grocery Store dataset (no dataset/classes.csv)")
    refs: dict[int, list[str]] = {}
    if reference_split:
        split = ds / f"{reference_split}.txt"
        if not split.is_file():
            raise ManifestError(f"no split file {split}")
        for line in split.read_text().splitlines():
            parts = [x.strip() for x in line.split(",")]
            if len(parts) >= 2 and parts[0]:
                refs.setdefault(int(parts[1]), []).append(str((ds / parts[0]).resolve()))
    with open(classes, newline="") as f:
        for row in csv.reader(f):
            if not row or not row[1].strip().isdigit():
                continue
            name, fine_id, iconic, desc = row[0], int(row[1]), row[4].lstrip("/"), row[5].lstrip("/")
            rel = Path(iconic).parent.relative_to("iconic-images-and-descriptions")
            description = None
            try:
                description = (ds / desc).read_text(encoding="utf-8", errors="replace").strip()
            except OSError:
                problems.append(RowProblem(desc, name, "description file missing", kind="file"))
            images = [ImageRecord(str((ds / iconic).resolve()), role="catalogue")]
            images += [ImageRecord(p, role="reference") for p in refs.get(fine_id, [])]
            yield ProductRecord(
                sku=name, title=name.replace("-", " "), description=description,
                category_path=tuple(rel.parts), images=tuple(images),
                attributes={"fine_label": fine_id, "coarse_label": int(row[3]), "coarse_class": row[2]},
                keep=frozenset({"brand", "price", "currency"}),  # the dataset has none: a shop's own stay
            )


def guess_format(path: Path) -> str:
    """csv / jsonl by suffix; a folder is the Grocery Store dataset when it has its
    classes.csv, an ImageFolder tree otherwise."""
    path = Path(path)
    if path.is_dir():
        is_grocery = (path / "dataset" / "classes.csv").is_file() or (path / "classes.csv").is_file()
        return "grocerystore" if is_grocery else "imagefolder"
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    raise ManifestError(f"cannot tell the format of {path} from its name; pass --format ({', '.join(FORMATS)})")


def read_source(path: Path, fmt: str, problems: list[RowProblem], reference_split: str | None = None) -> Iterator[ProductRecord]:
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path} does not exist")
    if fmt == "auto":
        fmt = guess_format(path)
    if fmt == "csv":
        return read_csv(path, problems)
    if fmt == "jsonl":
        return read_jsonl(path, problems)
    if fmt == "imagefolder":
        return read_imagefolder(path, problems)
    if fmt == "grocerystore":
        return read_grocerystore(path, problems, reference_split)
    raise ManifestError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
