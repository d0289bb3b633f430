"""The scale benchmark's 1M catalogue is searched with vectors computed outside the build
(benchmarks/scale_data.py): they must be exactly what the build would compute, or its
growth figures compare different data."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import pytest  # noqa: E402

from benchmarks.scale_data import FAMILY_SIZE, generate, inject_vectors, query_jpeg  # noqa: E402
from shopsearch.embedders.colorhist import ColorHistogramEmbedder  # noqa: E402
from shopsearch.embedding.cache import cache_dir  # noqa: E402
from shopsearch.images import load_image  # noqa: E402


def _cached(data_dir: Path) -> dict[str, np.ndarray]:
    emb = ColorHistogramEmbedder()
    out: dict[str, np.ndarray] = {}
    for chunk in sorted(cache_dir(data_dir / "vectors", emb.fingerprint).glob("chunk-*.npz")):
        with np.load(chunk) as z:
            out.update(zip(z["keys"].tolist(), z["vectors"]))
    return out


def test_injected_vectors_are_the_embedders_own(tmp_path: Path) -> None:
    manifest, hashes = generate(tmp_path, 40, workers=1, catalogue="noise")
    data_dir = tmp_path / "data"
    inject_vectors(data_dir, hashes, tmp_path / "images", workers=1)
    cached = _cached(data_dir)
    assert set(cached) == set(hashes)
    rows = manifest.read_text().splitlines()[1:]
    paths = [Path(r.split(",")[2]) for r in rows]
    expected = ColorHistogramEmbedder().encode_images([load_image(p) for p in paths])
    got = np.stack([cached[h] for h in hashes])
    np.testing.assert_array_equal(got, expected)
    # and unlike the uniform vectors of earlier runs, they are spread out like real histograms
    sims = got @ got.T
    assert np.median(sims[np.triu_indices(len(got), 1)]) < 0.5


def test_a_family_catalogue_is_clustered_and_shoppers_photos_find_their_product(tmp_path: Path) -> None:
    n = 3 * FAMILY_SIZE
    manifest, hashes = generate(tmp_path, n, workers=2, catalogue="families")
    inject_vectors(tmp_path / "data", hashes, tmp_path / "images", workers=2)
    cached = _cached(tmp_path / "data")
    x = np.stack([cached[h] for h in hashes])
    family = np.arange(n) // FAMILY_SIZE
    sims = x @ x.T
    same = family[:, None] == family[None, :]
    off = ~np.eye(n, dtype=bool)
    assert sims[same & off].mean() > sims[~same].mean() + 0.2  # variants look alike, families do not
    emb = ColorHistogramEmbedder()
    picks = list(range(0, n, 7))
    q = emb.encode_images([load_image(query_jpeg(i, "families")) for i in picks])
    top = np.argmax(q @ x.T, axis=1)
    assert np.mean(top == np.array(picks)) > 0.8  # a shopper's photo of a product finds that product
    assert np.all(family[top] == family[picks])
    with pytest.raises(ValueError, match="families"):
        generate(tmp_path, 10, workers=1, catalogue="noise")  # one kind of pictures per scratch folder


def test_uniform_vectors_stay_available_for_comparison(tmp_path: Path) -> None:
    _, hashes = generate(tmp_path, 12, workers=1)
    inject_vectors(tmp_path / "data", hashes)
    got = np.stack([_cached(tmp_path / "data")[h] for h in hashes])
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    assert np.median((got @ got.T)[np.triu_indices(len(got), 1)]) > 0.7
