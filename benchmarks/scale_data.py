"""The scale benchmark's generated catalogue (benchmarks/scale_bench.py, scale_ab.py): one small
seeded JPEG per product, 50 leaf categories, prices 1.00-999.99, a CSV manifest, and seeded
vectors written into the vector cache for the sizes whose vectors are not computed."""
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


def seeded_jpeg(seed: int) -> bytes:
    """A 32x32 JPEG of a seeded 4x4 colour grid (about 1 KB)."""
    from PIL import Image

    grid = np.random.default_rng(seed).integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grid).resize((32, 32), Image.NEAREST).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _write_block(args: tuple[str, int, int]) -> list[str]:
    folder, start, stop = args
    hashes = []
    for i in range(start, stop):
        path = Path(folder) / f"{i // 10_000:03d}" / f"p{i:07d}.jpg"
        data = path.read_bytes() if path.is_file() else b""
        if not data.endswith(b"\xff\xd9"):  # missing, or cut short by a stopped run (no JPEG end marker)
            data = seeded_jpeg(i)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        hashes.append(hashlib.sha256(data).hexdigest())
    return hashes


def generate(scratch: Path, n: int, workers: int) -> tuple[Path, list[str]]:
    """Images (shared by every size: product i is the same file, written once and then only
    read and hashed) and this size's manifest; returns the manifest and the images' content
    hashes in product order."""
    images = scratch / "images"
    blocks = [(str(images), s, min(n, s + 10_000)) for s in range(0, n, 10_000)]
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
                f.write(f"SKU{i:07d},product {i},{images / f'{i // 10_000:03d}' / f'p{i:07d}.jpg'},"
                        f"Dept{i % 5}/Cat{i % N_CATEGORIES:02d},{Decimal(int(prices[i])) / 100},EUR\n")
        os.replace(tmp, manifest)
    return manifest, hashes


def inject_vectors(data_dir: Path, hashes: list[str]) -> None:
    """Seeded unit vectors in the colorhist vector cache, keyed by content hash, in 100k chunks."""
    from shopsearch.embedders import load_embedder
    from shopsearch.embedding.cache import cache_dir, write_chunk_file

    emb = load_embedder(MODEL, "cpu", data_dir / "models")
    folder = cache_dir(data_dir / "vectors", emb.fingerprint)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "FINGERPRINT").write_text(emb.fingerprint + "\n")
    rng = np.random.default_rng(0)
    unique = list(dict.fromkeys(hashes))
    for s in range(0, len(unique), 100_000):
        part = unique[s:s + 100_000]
        v = rng.random((len(part), emb.dim), dtype=np.float32)  # non-negative, like histograms
        write_chunk_file(folder, part, v / np.linalg.norm(v, axis=1, keepdims=True))
