"""Labelled datasets -> a gallery (catalogue products with images) and queries with ground truth.

Layouts:
- grocerystore  the Grocery Store dataset. Products are the 81 fine classes. The gallery is
                a '+'-joined list of sources: `iconic` (each product's catalogue image) and
                split names (`train`, `val`: that split's photos as reference images of their
                product); default `iconic+train`. Queries are a split's photos (default `test`);
                relevant = the photo's own product.
- imagefolder   root/<class>/[<subclass>/...]/<image>, one product per image, no product
                identities: relevant = every gallery product of the query's category (its
                folder path). Gallery and queries are the sub-trees root/<gallery> and
                root/<queries> when present (default train/test); otherwise a seeded split of
                the whole tree (`--queries auto`: every 5th image by path hash is a query).
- manifest      products from a CSV/JSONL catalogue manifest (the importers' format); queries
                from a CSV with columns `image` (path, relative to the CSV) and `sku`;
                relevant = that product. --dataset is the manifest, or a folder holding
                products.csv|products.jsonl (+ queries.csv); --queries names the queries CSV.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from shopsearch.catalogue.readers import IMAGE_SUFFIXES, RowProblem, read_csv, read_grocerystore, read_imagefolder, read_jsonl
from shopsearch.catalogue.records import ImageRecord, ProductRecord
from shopsearch.errors import ConfigError, ManifestError

LAYOUTS = ("grocerystore", "imagefolder", "manifest")
_GALLERY_SPLITS = ("train", "gallery")
_QUERY_SPLITS = ("test", "query", "queries", "val")


@dataclass(frozen=True)
class Query:
    """A query photo and its labels."""

    path: str
    sku: str | None  # the product it shows (None in category mode)
    category: str  # category path, e.g. "Fruit/Apple/Golden-Delicious"


@dataclass(frozen=True)
class BenchDataset:
    name: str
    layout: str
    relevance: str  # "product" | "category"
    gallery_protocol: str
    queries_protocol: str
    products: tuple[ProductRecord, ...]
    queries: tuple[Query, ...]
    problems: tuple[str, ...] = ()
    _by_category: dict[str, frozenset[str]] = field(default_factory=dict, compare=False, repr=False)
    _skus: set[str] = field(default_factory=set, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Lookup tables for relevance (the containers are filled in place: the dataclass is frozen).
        by_cat: dict[str, set[str]] = {}
        for p in self.products:
            by_cat.setdefault(category_of(p), set()).add(p.sku)
            self._skus.add(p.sku)
        self._by_category.update({c: frozenset(s) for c, s in by_cat.items()})

    @property
    def gallery_images(self) -> int:
        return sum(len(p.images) for p in self.products)

    def relevant(self, q: Query) -> frozenset[str]:
        """Product SKUs that count as a correct answer (empty: the gallery cannot answer it)."""
        if self.relevance == "category":
            return self._by_category.get(q.category, frozenset())
        return frozenset({q.sku}) if q.sku in self._skus else frozenset()


def category_of(p: ProductRecord) -> str:
    return "/".join(p.category_path) if p.category_path else "(none)"


def truncate_category(category: str, depth: int) -> str:
    """"Fruit/Apple/Granny-Smith", 2 -> "Fruit/Apple"; depth <= 0 keeps the whole path."""
    parts = category.split("/")
    return "/".join(parts[:depth]) if depth > 0 else category


def load_dataset(path: str | Path, layout: str, gallery: str | None = None, queries: str | None = None) -> BenchDataset:
    """Read a labelled dataset; ConfigError/ManifestError with a clear message when it does not fit."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"dataset {path} does not exist")
    if layout == "grocerystore":
        return _grocerystore(path, gallery or "iconic+train", queries or "test")
    if layout == "imagefolder":
        return _imagefolder(path, gallery, queries)
    if layout == "manifest":
        return _manifest(path, gallery or "all", queries)
    raise ConfigError(f"unknown dataset layout {layout!r}; use one of {', '.join(LAYOUTS)}")


# -- Grocery Store --------------------------------------------------------------
def _grocerystore(root: Path, gallery: str, queries: str) -> BenchDataset:
    sources = [s.strip() for s in gallery.split("+") if s.strip()]
    bad = [s for s in sources if s not in ("iconic", "train", "val", "test")]
    if not sources or bad:
        raise ConfigError(f"--gallery for grocerystore is '+'-joined sources from iconic, train, val, test; got {gallery!r}")
    if queries in sources:
        raise ConfigError(f"the query split {queries!r} is also in the gallery ({gallery!r}): queries would find themselves")
    problems: list[RowProblem] = []
    base = list(read_grocerystore(root, problems))
    images: dict[str, list[ImageRecord]] = {p.sku: (list(p.images) if "iconic" in sources else []) for p in base}
    for split in (s for s in sources if s != "iconic"):
        for p in read_grocerystore(root, problems, reference_split=split):
            images[p.sku] += [im for im in p.images if im.role == "reference"]
    products = tuple(ProductRecord(p.sku, p.title, p.description, category_path=p.category_path,
                                   attributes=p.attributes, images=tuple(images[p.sku])) for p in base)
    qs = []
    for p in read_grocerystore(root, problems, reference_split=queries):
        qs += [Query(im.path, p.sku, category_of(p)) for im in p.images if im.role == "reference"]
    return BenchDataset(root.name, "grocerystore", "product", gallery, queries,
                        tuple(p for p in products if p.images), tuple(qs), _problem_lines(problems))


# -- ImageFolder ----------------------------------------------------------------
def _imagefolder(root: Path, gallery: str | None, queries: str | None) -> BenchDataset:
    problems: list[RowProblem] = []
    g_dir = _split_dir(root, gallery, _GALLERY_SPLITS, "gallery")
    q_dir = _split_dir(root, queries, _QUERY_SPLITS, "queries")
    if (g_dir is None) != (q_dir is None):
        raise ConfigError(f"{root}: found a {'gallery' if g_dir else 'queries'} sub-tree but not the other; "
                          "name both with --gallery/--queries, or use --queries auto for a seeded split")
    if g_dir is not None and q_dir is not None:
        products = tuple(read_imagefolder(g_dir, problems))
        qs = tuple(Query(p.images[0].path, None, category_of(p)) for p in read_imagefolder(q_dir, problems))
        g_name, q_name = g_dir.name, q_dir.name
    else:
        everything = list(read_imagefolder(root, problems))
        is_query = [_hash_bucket(p.sku) == 0 for p in everything]
        products = tuple(p for p, q in zip(everything, is_query) if not q)
        qs = tuple(Query(p.images[0].path, None, category_of(p)) for p, q in zip(everything, is_query) if q)
        g_name, q_name = "auto", "auto"
    if not products or not qs:
        raise ManifestError(f"{root}: no images found for the {'gallery' if not products else 'queries'} "
                            "(expected root/<class>/<image> files)")
    return BenchDataset(root.name, "imagefolder", "category", g_name, q_name, products, qs, _problem_lines(problems))


def _split_dir(root: Path, name: str | None, defaults: tuple[str, ...], what: str) -> Path | None:
    if name == "auto":
        return None
    if name:
        d = root / name
        if not d.is_dir():
            raise ConfigError(f"--{what} {name!r}: {d} is not a folder (use --{what} auto for a seeded split)")
        return d
    # A default split folder counts only if it holds class folders, not images itself.
    return next((root / n for n in defaults if (root / n).is_dir() and any(c.is_dir() for c in (root / n).iterdir())),
                None)


def _hash_bucket(key: str, buckets: int = 5) -> int:
    """Stable across runs and machines (unlike hash())."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % buckets


# -- manifest -----------------------------------------------------------------
def _manifest(path: Path, gallery: str, queries: str | None) -> BenchDataset:
    if gallery != "all":
        raise ConfigError(f"--gallery for a manifest is 'all' (every manifest image); got {gallery!r}")
    if path.is_dir():
        found = [path / n for n in ("products.csv", "products.jsonl") if (path / n).is_file()]
        if not found:
            raise ManifestError(f"{path} holds no products.csv or products.jsonl")
        manifest, folder = found[0], path
    else:
        manifest, folder = path, path.parent
    q_path = Path(queries) if queries else folder / "queries.csv"
    if not q_path.is_absolute() and queries and not q_path.exists():
        q_path = folder / queries
    if not q_path.is_file():
        raise ManifestError(f"queries file {q_path} not found (a CSV with columns image,sku; pass --queries PATH)")
    problems: list[RowProblem] = []
    reader = read_jsonl if manifest.suffix.lower() == ".jsonl" else read_csv
    products = tuple(p for p in reader(manifest, problems) if p.images)
    cats = {p.sku: category_of(p) for p in products}
    qs = []
    with open(q_path, newline="", encoding="utf-8-sig") as f:
        rows = csv.DictReader(f)
        col = next((c for c in ("image", "path") if c in (rows.fieldnames or [])), None)
        if col is None or "sku" not in (rows.fieldnames or []):
            raise ManifestError(f"{q_path}: a queries CSV needs a header row with 'image' and 'sku' columns")
        for n, row in enumerate(rows, start=2):
            img, sku = (row.get(col) or "").strip(), (row.get("sku") or "").strip()
            if not img or not sku:
                problems.append(RowProblem(f"{q_path.name} row {n}", sku or None, "missing image or sku"))
                continue
            p = Path(img)
            full = p if p.is_absolute() else (q_path.parent / p).resolve()
            if full.suffix.lower() not in IMAGE_SUFFIXES:
                problems.append(RowProblem(f"{q_path.name} row {n}", sku, f"{img} is not an image file name"))
                continue
            qs.append(Query(str(full), sku, cats.get(sku, "(unknown)")))
    if not products or not qs:
        raise ManifestError(f"{manifest}: no {'products with images' if not products else 'queries'} to benchmark")
    return BenchDataset(manifest.stem, "manifest", "product", gallery, q_path.name, products, tuple(qs),
                        _problem_lines(problems))


def _problem_lines(problems: list[RowProblem]) -> tuple[str, ...]:
    return tuple(f"{p.where}: {p.reason}" for p in problems)
