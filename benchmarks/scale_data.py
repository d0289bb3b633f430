"""The scale benchmark's generated catalogue (benchmarks/scale_bench.py, scale_ab.py): one small
seeded JPEG per product, 50 leaf categories, prices 1.00-999.99, a CSV manifest, and vectors
written into the vector cache for the sizes the build should not embed.

Two kinds of pictures (`CATALOGUES`):
- `families`: products come in families of FAMILY_SIZE variants (a shirt in several colours,
  a yoghurt in several flavours): a family's 4x4 colour grid, two cells recoloured per
  variant and a little lighting noise. Neighbourhoods are clustered, as real catalogues'
  embeddings are, and a shopper's photo of a product (`shopper_jpeg`: the product's grid,
  more noise) has its product among the nearest.
- `noise`: every product an independent random 4x4 grid (the runs before session 31). Its
  vectors have no neighbourhood structure: an HNSW walk scores far more nodes and still
  misses most of the exact top-10 (benchmarks/RESULTS.md, scale_*_noise_*), so it measures a
  search no shop sees."""
from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ProcessPoolExecutor
from decimal import Decimal
from pathlib import Path

import numpy as np

N_CATEGORIES = 50
MODEL = "colorhist"
CATALOGUES = ("families", "noise")
#: variants per product family in the `families` catalogue
FAMILY_SIZE = 100
#: grey levels of lighting noise on a catalogue picture, and on a shopper's photo of it
CATALOGUE_NOISE, SHOPPER_NOISE = 12.0, 15.0


def image_path(folder: Path | str, i: int) -> Path:
    """Where product i's picture lives under the images folder (10,000 per subfolder)."""
    return Path(folder) / f"{i // 10_000:03d}" / f"p{i:07d}.jpg"


def _jpeg(grid: np.ndarray) -> bytes:
    """A 32x32 JPEG of a 4x4 colour grid (about 1 KB)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(grid).resize((32, 32), Image.NEAREST).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def seeded_jpeg(seed: int) -> bytes:
    """A 32x32 JPEG of a seeded random 4x4 colour grid: a `noise` product, or a new picture."""
    return _jpeg(np.random.default_rng(seed).integers(0, 256, size=(4, 4, 3), dtype=np.uint8))


def family_grid(i: int) -> np.ndarray:
    """Product i's grid in the `families` catalogue: its family's grid, two cells recoloured,
    lighting noise (float, 0-255)."""
    grid = np.random.default_rng(10 ** 9 + i // FAMILY_SIZE).integers(0, 256, size=(4, 4, 3)).astype(float)
    rng = np.random.default_rng(i)
    for cell in rng.choice(16, 2, replace=False):
        grid[cell // 4, cell % 4] = rng.integers(0, 256, 3)
    return np.clip(grid + rng.normal(0, CATALOGUE_NOISE, grid.shape), 0, 255)


def product_jpeg(i: int, catalogue: str) -> bytes:
    """Product i's catalogue picture."""
    return seeded_jpeg(i) if catalogue == "noise" else _jpeg(family_grid(i).astype(np.uint8))


def query_jpeg(i: int, catalogue: str) -> bytes:
    """A search photo for product i: a shopper's photo of it (its grid under other light) in
    `families`; in `noise`, a new random grid (nothing in a noise catalogue looks alike)."""
    if catalogue == "noise":
        return seeded_jpeg(i + 10 ** 8)
    noise = np.random.default_rng(2 * 10 ** 9 + i).normal(0, SHOPPER_NOISE, (4, 4, 3))
    return _jpeg(np.clip(family_grid(i) + noise, 0, 255).astype(np.uint8))


def catalogue_of(scratch: Path) -> str:
    """The kind of catalogue a scratch folder's pictures are (see generate)."""
    kind_file = scratch / "CATALOGUE"
    return kind_file.read_text().strip() if kind_file.is_file() else "noise"


def _write_block(args: tuple[str, int, int, str]) -> list[str]:
    folder, start, stop, catalogue = args
    hashes = []
    for i in range(start, stop):
        path = image_path(folder, i)
        data = path.read_bytes() if path.is_file() else b""
        if not data.endswith(b"\xff\xd9"):  # missing, or cut short by a stopped run (no JPEG end marker)
            data = product_jpeg(i, catalogue)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        hashes.append(hashlib.sha256(data).hexdigest())
    return hashes


def generate(scratch: Path, n: int, workers: int, catalogue: str = "noise") -> tuple[Path, list[str]]:
    """Images (shared by every size: product i is the same file, written once and then only
    read and hashed) and this size's manifest; returns the manifest and the images' content
    hashes in product order. A scratch folder holds one kind of catalogue (CATALOGUES)."""
    if catalogue not in CATALOGUES:
        raise ValueError(f"unknown catalogue {catalogue!r}; one of {CATALOGUES}")
    scratch.mkdir(parents=True, exist_ok=True)
    kind_file = scratch / "CATALOGUE"
    # before the kinds, scratch folders held noise pictures without saying so
    held = catalogue_of(scratch) if kind_file.is_file() or (scratch / "images").is_dir() else catalogue
    if held != catalogue:
        raise ValueError(f"{scratch} holds the {held!r} catalogue's pictures; use another scratch folder")
    kind_file.write_text(catalogue + "\n")
    images = scratch / "images"
    blocks = [(str(images), s, min(n, s + 10_000), catalogue) for s in range(0, n, 10_000)]
    with ProcessPoolExecutor(workers) as pool:
        hashes = [h for block in pool.map(_write_block, blocks) for h in block]
    manifest = scratch / f"manifest_{n}.csv"
    if not manifest.is_file():
        rng = np.random.default_rng(n)
        prices = rng.integers(100, 100_000, size=n)
        tmp = manifest.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write("sku,title,image,category,price,currency\n")
            for i in range(n):
                f.write(f"SKU{i:07d},product {i},{image_path(images, i)},"
                        f"Dept{i % 5}/Cat{i % N_CATEGORIES:02d},{Decimal(int(prices[i])) / 100},EUR\n")
        os.replace(tmp, manifest)
    return manifest, hashes


def colorhist_block(args: tuple[str, int, int]) -> np.ndarray:
    """The colorhist vectors of products start..stop-1's images, computed as the embedder does
    (the same decode, preprocess and encode), in one process."""
    from shopsearch.embedders.colorhist import ColorHistogramEmbedder
    from shopsearch.images import load_image

    folder, start, stop = args
    emb = ColorHistogramEmbedder()
    out = []
    for a in range(start, stop, 500):
        batch = [emb.preprocess(load_image(image_path(folder, i)))
                 for i in range(a, min(stop, a + 500))]
        out.append(emb.encode_batch(np.stack(batch)))
    return np.concatenate(out)


def inject_vectors(data_dir: Path, hashes: list[str], images: Path | None = None, workers: int = 2) -> None:
    """Vectors in the colorhist vector cache, keyed by content hash, in 100k chunks, so that the
    build embeds nothing. With `images` (generate()'s folder) they are the images' own colorhist
    vectors, computed here in `workers` processes without the build's pipeline around them:
    a 1M catalogue then has the vectors the build would compute, distributed like the smaller
    sizes' (what a size comparison needs). Without, seeded uniform unit vectors: the earlier
    runs' data, nearly equidistant points that no ANN graph walks well."""
    from shopsearch.embedders import load_embedder
    from shopsearch.embedding.cache import cache_dir, write_chunk_file

    emb = load_embedder(MODEL, "cpu", data_dir / "models")
    folder = cache_dir(data_dir / "vectors", emb.fingerprint)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "FINGERPRINT").write_text(emb.fingerprint + "\n")
    if images is None:
        rng = np.random.default_rng(0)
        unique = list(dict.fromkeys(hashes))
        for s in range(0, len(unique), 100_000):
            part = unique[s:s + 100_000]
            v = rng.random((len(part), emb.dim), dtype=np.float32)  # non-negative, like histograms
            write_chunk_file(folder, part, v / np.linalg.norm(v, axis=1, keepdims=True))
        return
    blocks = [(str(images), s, min(len(hashes), s + 10_000)) for s in range(0, len(hashes), 10_000)]
    with ProcessPoolExecutor(workers) as pool:
        done: list[np.ndarray] = []
        for (_, start, stop), vectors in zip(blocks, pool.map(colorhist_block, blocks)):
            done.append(vectors)
            if stop % 100_000 == 0 or stop == len(hashes):
                first = stop - sum(len(v) for v in done)
                keys, rows = hashes[first:stop], np.concatenate(done)
                first_row: dict[str, int] = {}
                for j, key in enumerate(keys):  # identical images share one key: one row each
                    first_row.setdefault(key, j)
                write_chunk_file(folder, list(first_row), rows[list(first_row.values())])
                done = []
