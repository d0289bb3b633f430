"""The embedding pipeline: executors agree, chunks are written as it goes, bad images of
every kind are reported with a reason and never stop the run."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.build import IndexBuilder
from shopsearch.embedding.pipeline import WorkItem, embed_items, tuned_config
from shopsearch.embedding.cache import VectorCache
from shopsearch.catalogue.records import ImageRecord, ProductRecord
from shopsearch.index import IndexStore
from tests.conftest import FakeEmbedder, make_image, sha

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # timm transforms image by image (tests/conftest.py)


def _items(paths: list[Path]) -> list[WorkItem]:
    return [WorkItem(sha(p), str(p), i + 1) for i, p in enumerate(paths)]


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_executors_match_inline_and_write_chunks(tmp_path, image_dir, executor):
    paths = image_dir(37)
    items = _items(paths)
    ref = VectorCache(tmp_path / "ref", "fake-grid4x4", 48)
    r0 = embed_items(FakeEmbedder(), items, ref, batch_size=8, progress=False, executor="inline")
    cache = VectorCache(tmp_path / "c", "fake-grid4x4", 48)
    emb = FakeEmbedder()
    rep = embed_items(emb, items, cache, batch_size=8, workers=2, chunk_size=8, progress=False, executor=executor)
    assert (r0.embedded, rep.embedded, rep.skipped, rep.failed) == (37, 37, 0, [])
    assert emb.calls == 37
    keys = [it.key for it in items]
    np.testing.assert_array_equal(cache.get_many(keys), ref.get_many(keys))
    # a chunk on disk every 8 vectors (the last one partial), each readable on its own
    assert len(list(cache.dir.glob("chunk-*.npz"))) == 5
    again = embed_items(FakeEmbedder(), items, VectorCache(tmp_path / "c", "fake-grid4x4", 48), progress=False)
    assert (again.embedded, again.skipped) == (0, 37)


def test_tuned_config_on_cpu_prefers_small_batches_and_threads():
    cfg = tuned_config(FakeEmbedder())
    assert cfg.batch_size == 16 and cfg.executor in ("thread", "process") and cfg.workers >= 1
    assert tuned_config(FakeEmbedder(), batch_size=5, workers=3, executor="inline") == \
        type(cfg)(5, 3, "inline", 512)


def _bad_files(d: Path) -> dict[str, Path]:
    """One file per kind of awkward image; the first three are decodable, the rest are not."""
    d.mkdir()
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).resize((256, 256))
    buf = io.BytesIO()
    base.save(buf, "JPEG")
    jpg = buf.getvalue()
    files = {k: d / name for k, name in [("cmyk", "cmyk.jpg"), ("16bit", "g16.png"), ("alpha", "alpha.png"),
                                          ("corrupt", "corrupt.jpg"), ("truncated", "trunc.jpg"),
                                          ("empty", "empty.jpg"), ("huge", "huge.png"), ("missing", "gone.jpg")]}
    base.convert("CMYK").save(files["cmyk"])
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).save(files["16bit"])
    Image.new("RGBA", (64, 64), (255, 0, 0, 128)).save(files["alpha"])
    files["corrupt"].write_bytes(b"\xff\xd8\xff\xe0" + rng.integers(0, 255, 2000, dtype=np.uint8).tobytes())
    files["truncated"].write_bytes(jpg[: len(jpg) // 2])
    files["empty"].write_bytes(b"")
    Image.new("L", (20001, 1)).save(files["huge"])  # longer side than any photo: refused before decoding
    return files


REASONS = {"corrupt": "cannot read image", "truncated": "truncated", "empty": "empty",
           "huge": "20001x1 pixels", "missing": "no such file"}


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_bad_images_reported_with_reason_never_fatal(tmp_path, sqlite_catalogue, image_dir, executor):
    files = _bad_files(tmp_path / "bad")
    good = image_dir(3)
    for i, p in enumerate(good):
        sqlite_catalogue.upsert_product(ProductRecord(f"G{i}", "good", images=(ImageRecord(str(p), sha256=sha(p)),)))
    for kind, p in files.items():
        # status "ok": the file went bad after the catalogue import, as happens on real storage
        sqlite_catalogue.upsert_product(ProductRecord(
            f"B-{kind}", kind, images=(ImageRecord(str(p), sha256=f"{kind:x<64}"[:64]),)))
    store = IndexStore(tmp_path / "index")
    # no rescan: the files go bad between the rescan and the embedding (the rescan's own
    # handling of them is tested below)
    r = IndexBuilder(FakeEmbedder(), sqlite_catalogue, store, tmp_path / "vectors").build(
        progress=False, workers=2, executor=executor, batch_size=4, rescan=False)
    failed = {Path(p).name: reason for _, p, reason in r.failed}
    assert set(failed) == {files[k].name for k in REASONS}
    for kind, needle in REASONS.items():
        assert needle in failed[files[kind].name], (kind, failed[files[kind].name])
    assert r.vectors == 3 + 3  # good ones plus CMYK, 16-bit and alpha, converted to RGB
    # the failure report travels with the build, and the catalogue remembers why
    report = json.loads((store.build_dir(r.build_id) / "report.json").read_text())
    assert {Path(f["path"]).name for f in report["failed"]} == set(failed)
    bad_status = {sqlite_catalogue.image(i).path: sqlite_catalogue.image(i).error for i, _, _ in r.failed}
    assert all(bad_status[p] == reason for _, p, reason in r.failed)
    assert len(sqlite_catalogue.indexable_images()) == 6


def test_rescan_catches_files_gone_bad_before_embedding(tmp_path, sqlite_catalogue):
    files = _bad_files(tmp_path / "bad")
    for kind, p in files.items():
        sqlite_catalogue.upsert_product(ProductRecord(
            f"B-{kind}", kind, images=(ImageRecord(str(p), sha256=f"{kind:x<64}"[:64]),)))
    emb = FakeEmbedder()
    r = IndexBuilder(emb, sqlite_catalogue, IndexStore(tmp_path / "index"), tmp_path / "vectors").build(
        progress=False, executor="inline")
    scan = r.rescan
    assert (scan.missing, scan.invalid, r.vectors, emb.calls) == (1, 4, 3, 3)
    failed = {Path(p).name: reason for _, p, reason in r.failed}  # in the build's failure list too
    errors = {Path(img.path).name: img.error for p in sqlite_catalogue.products() for img in p.images}
    for kind, needle in REASONS.items():
        assert needle in errors[files[kind].name], (kind, errors[files[kind].name])
        assert failed[files[kind].name] == errors[files[kind].name]


def test_alpha_is_composited_on_white(tmp_path):
    p = tmp_path / "a.png"
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(p)  # fully transparent black: must come out white
    cache = VectorCache(tmp_path / "c", "fake-grid4x4", 48)
    embed_items(FakeEmbedder(), [WorkItem(sha(p), str(p))], cache, progress=False, executor="inline")
    white = FakeEmbedder().encode_images([Image.new("RGB", (32, 32), "white")])
    np.testing.assert_allclose(cache.get_many([sha(p)]), white, atol=1e-6)


def test_exif_orientation_applied(tmp_path):
    img = make_image(7, (64, 32))
    upright = tmp_path / "upright.jpg"
    img.save(upright, quality=95)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.transpose(Image.Transpose.ROTATE_90).save(rotated, quality=95, exif=exif)
    cache = VectorCache(tmp_path / "c", "fake-grid4x4", 48)
    items = [WorkItem(sha(upright), str(upright)), WorkItem(sha(rotated), str(rotated))]
    embed_items(FakeEmbedder(), items, cache, progress=False, executor="inline")
    a, b = cache.get_many([it.key for it in items])
    assert float(a @ b) > 0.98


def test_gpu_transform_replays_the_model_transform(tmp_path):
    """The GPU path's resize/crop/normalise (run here on the CPU) matches the PIL transform."""
    from types import SimpleNamespace

    import torch
    from timm.data import create_transform
    from torchvision.io import ImageReadMode, decode_jpeg

    from shopsearch.embedding.gpu import gpu_transform_for

    tf = create_transform(input_size=(3, 224, 224), interpolation="bicubic", crop_pct=0.875,
                          mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    emb = SimpleNamespace(transform=tf, device="cuda")
    run = gpu_transform_for(emb, device="cpu")
    assert run is not None
    paths = []
    # landscape, portrait, smaller than the crop, and a second landscape (resized in one batch with the first)
    for i, size in enumerate([(400, 300), (240, 320), (100, 90), (400, 300)]):
        p = tmp_path / f"{i}.jpg"
        make_image(i, size).save(p, quality=95)
        paths.append(p)
    data = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
    got = run([decode_jpeg(d, mode=ImageReadMode.RGB) for d in data]).numpy()
    want = np.stack([tf(Image.open(p).convert("RGB")).numpy() for p in paths])
    assert got.shape == want.shape == (4, 3, 224, 224)
    assert np.abs(got - want).mean() < 0.02  # PIL rounds to uint8 between steps; inputs span [-1, 1]
    assert gpu_transform_for(SimpleNamespace(transform=lambda im: im, device="cuda"), device="cpu") is None


def test_split_preprocess_is_bit_identical_to_the_transform(tmp_path):
    """Workers ship uint8 pixels; the batch normalisation must give exactly the transform's floats."""
    from types import SimpleNamespace

    import torch
    from timm.data import create_transform

    from shopsearch.embedding.preprocess import split_preprocess

    for kw in (dict(crop_pct=0.875, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),  # EfficientNet-Lite0
               dict(crop_pct=1.0, mean=(0.4815, 0.4578, 0.4082), std=(0.2686, 0.2613, 0.2758))):  # CLIP-like
        tf = create_transform(input_size=(3, 224, 224), interpolation="bicubic", **kw)
        split = split_preprocess(SimpleNamespace(transform=tf, encode_tensor=lambda x: x))
        assert split is not None
        imgs = [make_image(i, size) for i, size in enumerate([(348, 348), (640, 480), (120, 200)])]
        got = split.finish(np.stack([split(im) for im in imgs]))
        want = torch.stack([tf(im) for im in imgs])
        assert torch.equal(got, want)
    assert split_preprocess(SimpleNamespace(transform=lambda im: im, encode_tensor=lambda x: x)) is None
    assert split_preprocess(FakeEmbedder()) is None


class MeanColour:
    """A 3-d 'model' over a real timm transform: enough to run the GPU batch loop on the CPU."""

    name, dim, fingerprint, device = "mean", 3, "mean-colour", "cuda"

    def __init__(self) -> None:
        from timm.data import create_transform

        self.transform = create_transform(input_size=(3, 224, 224), interpolation="bicubic", crop_pct=0.875,
                                          mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

    def preprocess(self, img):
        return self.transform(img).numpy()

    def encode_batch(self, batch):
        from shopsearch.embedders.base import l2_normalize

        return l2_normalize(np.asarray(batch).mean(axis=(2, 3)) + 2.0)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.parametrize("cpu_decoders,device", [
    (0, "cpu"), (2, "cpu"),
    pytest.param(0, "cuda", marks=pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU (nvJPEG)")),
    pytest.param(2, "cuda", marks=pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU (nvJPEG)")),
])
def test_gpu_batch_loop_matches_cpu_path(tmp_path, cpu_decoders, device):
    """The nvJPEG loop (decode_jpeg on the CPU unless a GPU is here): JPEGs decoded in sub-batches,
    PNG and CMYK through the CPU fallback, failures reported, vectors close to the CPU
    pipeline's, order kept."""
    from shopsearch.embedding.gpu import run_gpu_batches
    from shopsearch.embedding.pipeline import PipelineConfig

    files = _bad_files(tmp_path / "bad")
    paths = []
    for i in range(70):
        p = tmp_path / f"{i}.jpg"
        make_image(i, (320, 240) if i % 3 else (200, 260)).save(p, quality=95)
        paths.append(p)
    items = _items(paths + [p for p in files.values() if p.exists()]) + [WorkItem("f" * 64, str(files["missing"]))]
    got: dict[str, np.ndarray] = {}
    failed: dict[str, str] = {}

    def on_vectors(keys, vecs):
        got.update(zip(keys, vecs))

    run_gpu_batches(MeanColour(), items, PipelineConfig(32, 2, "gpu"), on_vectors,
                    lambda it, reason: failed.__setitem__(Path(it.path).name, reason), device=device,
                    cpu_decoders=cpu_decoders)
    assert set(failed) == {files[k].name for k in REASONS}
    assert len(got) == 70 + 3
    ref = VectorCache(tmp_path / "ref", "mean-colour", 3)
    embed_items(MeanColour(), [it for it in items if it.key in got], ref, progress=False, executor="inline")
    keys = list(got)
    np.testing.assert_allclose(np.stack([got[k] for k in keys]), ref.get_many(keys), atol=2e-3)
