"""The GPU executor's two lanes (run here on the CPU): the decode lane works on the next
batch while the model runs, errors on either side stop both without hanging, and no
thread outlives the run."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from shopsearch.embedding import gpu, gpu_decode
from shopsearch.embedding.pipeline import PipelineConfig, WorkItem
from tests.conftest import make_image, sha
from tests.test_indexer_pipeline import MeanColour

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # timm transforms of small batches (tests/conftest.py)


def _jpegs(d: Path, n: int) -> list[WorkItem]:
    d.mkdir()
    items = []
    for i in range(n):
        p = d / f"{i}.jpg"
        make_image(i, (160, 120)).save(p, quality=90)
        items.append(WorkItem(sha(p), str(p), i + 1))
    return items


def _lane_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "gpu-decode"]


def test_decode_lane_runs_ahead_of_the_model(tmp_path, monkeypatch):
    """While the model holds batch 0, the next batch gets decoded and transformed: the model
    waits for that to happen, which can only succeed if the lanes overlap."""
    items = _jpegs(tmp_path / "img", 40)  # 5 batches of 8
    transformed = threading.Semaphore(0)
    real_for = gpu.gpu_transform_for

    def counting_transform(embedder, device=None):
        run = real_for(embedder, device)

        def wrapped(images):
            out = run(images)
            transformed.release()
            return out

        return wrapped

    monkeypatch.setattr(gpu, "gpu_transform_for", counting_transform)
    overlapped = []

    class SlowModel(MeanColour):
        def encode_batch(self, batch):
            # batch k is already counted; wait for k+1 (or time out -> no overlap)
            if len(overlapped) < 4:
                transformed.acquire(timeout=10)  # this batch
                overlapped.append(transformed.acquire(timeout=10))  # the next one
                transformed.release()  # leave it for the next call
            return super().encode_batch(batch)

    got: dict[str, np.ndarray] = {}
    stages = gpu.run_gpu_batches(SlowModel(), items, PipelineConfig(8, 2, "gpu"),
                                 lambda k, v: got.update(zip(k, v)), lambda it, r: pytest.fail(r), device="cpu",
                                 cpu_decoders=0)
    assert overlapped == [True, True, True, True]
    assert set(got) == {it.key for it in items}
    assert stages["model"] > 0 and stages["decode"] > 0
    assert not _lane_threads()


def test_error_in_the_model_lane_stops_the_decode_lane(tmp_path):
    items = _jpegs(tmp_path / "img", 64)
    calls = []

    def on_vectors(keys, vecs):
        calls.append(len(keys))
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        gpu.run_gpu_batches(MeanColour(), items, PipelineConfig(8, 2, "gpu"), on_vectors,
                            lambda it, r: None, device="cpu", cpu_decoders=0)
    assert calls == [8]  # nothing embedded after the failure
    assert not _lane_threads()


def test_error_in_the_decode_lane_reaches_the_caller(tmp_path, monkeypatch):
    items = _jpegs(tmp_path / "img", 24)
    seen = []

    def broken_transform(embedder, device=None):
        def run(images):
            if seen:
                raise MemoryError("CUDA out of memory (simulated)")
            seen.append(len(images))
            return real(images)

        real = real_for(embedder, device)
        return run

    real_for = gpu.gpu_transform_for
    monkeypatch.setattr(gpu, "gpu_transform_for", broken_transform)
    got: dict[str, np.ndarray] = {}
    with pytest.raises(MemoryError, match="simulated"):
        gpu.run_gpu_batches(MeanColour(), items, PipelineConfig(8, 2, "gpu"), lambda k, v: got.update(zip(k, v)),
                            lambda it, r: None, device="cpu", cpu_decoders=0)
    assert len(got) == 8  # the batch decoded before the failure was still embedded and handed over
    assert not _lane_threads()


def test_failures_are_reported_from_the_calling_thread(tmp_path):
    """on_failure may touch state that is not thread-safe (the report, a SQLite session)."""
    items = _jpegs(tmp_path / "img", 10)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + b"\x00" * 100)
    items.append(WorkItem(sha(bad), str(bad), 99))
    threads = []
    gpu.run_gpu_batches(MeanColour(), items, PipelineConfig(4, 2, "gpu"), lambda k, v: None,
                        lambda it, r: threads.append(threading.current_thread()), device="cpu", cpu_decoders=0)
    assert threads == [threading.main_thread()]


def test_cpu_decode_lane_takes_whole_batches_and_reports_like_the_cpu_pipeline(tmp_path, monkeypatch):
    """Every file through the CPU decode processes (share pinned to 1): the slot ranges are
    reused batch after batch without mixing images up, bad files get the CPU pipeline's
    reasons, and the shared arena is gone afterwards."""
    import glob

    from shopsearch.embedding.cache import VectorCache
    from shopsearch.embedding.pipeline import embed_items
    from tests.test_indexer_pipeline import REASONS, _bad_files

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # where the arena goes if there is no /dev/shm
    arenas_before = set(glob.glob("/dev/shm/shopsearch-decode-*"))
    items = _jpegs(tmp_path / "j", 45)  # 6 batches of 8: both slot ranges reused twice
    files = _bad_files(tmp_path / "bad")
    bad = [WorkItem(f"{i:064x}", str(p)) for i, p in enumerate(files.values())]
    items = items[:20] + bad + items[20:]
    got, failed = {}, {}
    monkeypatch.setattr(gpu, "nvjpeg_decode", lambda *a: pytest.fail("nvJPEG called with the CPU share pinned to 1"))
    gpu.run_gpu_batches(MeanColour(), items, PipelineConfig(8, 2, "gpu"), lambda k, v: got.update(zip(k, v)),
                        lambda it, r: failed.__setitem__(Path(it.path).name, r), device="cpu",
                        cpu_decoders=2, cpu_share=1.0)
    assert set(failed) == {files[k].name for k in REASONS}
    for k, fragment in REASONS.items():
        assert fragment in failed[files[k].name]
    ref = VectorCache(tmp_path / "ref", "mean-colour", 3)
    embed_items(MeanColour(), [it for it in items if it.key in got], ref, progress=False, executor="inline")
    keys = list(got)
    assert len(keys) == 45 + 3
    np.testing.assert_allclose(np.stack([got[k] for k in keys]), ref.get_many(keys), atol=2e-3)
    assert set(glob.glob("/dev/shm/shopsearch-decode-*")) == arenas_before
    assert not list(tmp_path.glob("shopsearch-decode-*"))


def test_jpeg_frame_size_reads_the_header_like_pil(tmp_path):
    """The cheap header walk that guards nvJPEG gives PIL's size for every JPEG flavour and
    None for anything that is not a whole JPEG header."""
    import io

    from PIL import Image

    img = make_image(3, (301, 177))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the APP1 segment comes before the frame header
    variants = {"baseline": {}, "progressive": {"progressive": True}, "restart": {"restart_marker_blocks": 1},
                "exif": {"exif": exif}, "q20": {"quality": 20}}
    for name, kw in variants.items():
        buf = io.BytesIO()
        img.save(buf, "JPEG", **kw)
        data = buf.getvalue()
        assert gpu_decode.jpeg_frame_size(data) == Image.open(io.BytesIO(data)).size == (301, 177), name
        assert gpu_decode._jpeg_size_ok(data)
    assert gpu_decode.jpeg_frame_size(data[:20]) is None  # cut before the frame header
    assert gpu_decode.jpeg_frame_size(b"\xff\xd8\xff\xe0" + bytes(40)) is None  # zero-length segment
    assert gpu_decode.jpeg_frame_size(b"\xff\xd8\xff\xda\x00\x08" + bytes(40)) is None  # scan before frame
    big = io.BytesIO()
    Image.new("L", (20001, 1)).save(big, "JPEG")
    assert gpu_decode.jpeg_frame_size(big.getvalue()) == (20001, 1) and not gpu_decode._jpeg_size_ok(big.getvalue())


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_gives_the_eager_vectors(precision):
    """The captured tower replays the eager model's kernels: same vectors for a full batch,
    a padded short one, and eager (no replay) for a single query image."""
    import torch
    from torch import nn

    from shopsearch.embedders.torch_base import TorchEmbedder

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 8)).cuda().eval()
    emb = TorchEmbedder("tiny", model, lambda im: im, 8, "tiny", device="cuda", precision=precision)
    x = torch.randn(16, 3, 32, 32, device="cuda")
    eager = emb.encode_tensor(x)
    assert emb.capture_cuda_graph(x)
    calls = []
    real_replay = emb._graph.graph.replay
    emb._graph.graph.replay = lambda: (calls.append(1), real_replay())[1]
    tol = 1e-5 if precision == "fp32" else 2e-2
    np.testing.assert_allclose(emb.encode_tensor(x), eager, atol=tol)
    np.testing.assert_allclose(emb.encode_tensor(x[:9]), eager[:9], atol=tol)  # padded
    np.testing.assert_allclose(emb.encode_tensor(x[:1]), eager[:1], atol=tol)  # eager
    assert len(calls) == 2


def test_cpu_lane_arena_has_no_name_while_workers_write_into_it(tmp_path, monkeypatch):
    """On Linux the workers inherit the shared mapping, so the arena file is unlinked as soon
    as they exist (a killed run leaves nothing behind), and what they decode still reaches
    the parent: the same pixels as the CPU pipeline's decoder."""
    import glob
    import sys

    from shopsearch.embedding.cpu_lane import CpuDecodeLane
    from shopsearch.embedding.preprocess import decode_source

    if not sys.platform.startswith("linux"):
        pytest.skip("fork start method only")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    before = set(glob.glob("/dev/shm/shopsearch-decode-*")) | set(tmp_path.glob("shopsearch-decode-*"))
    items = _jpegs(tmp_path / "j", 3)
    lane = CpuDecodeLane(2, 4, 224)
    try:
        after = set(glob.glob("/dev/shm/shopsearch-decode-*")) | set(tmp_path.glob("shopsearch-decode-*"))
        assert after == before
        res = dict(r for f in lane.submit([(3, items[2].path), (0, items[0].path)]) for r in lane.result(f))
        for slot, it in ((3, items[2]), (0, items[0])):
            want = np.asarray(decode_source(it.path, 224))
            np.testing.assert_array_equal(lane.pixels(slot, res[slot]), want)
    finally:
        lane.close()


@pytest.mark.parametrize("var,value", [("SHOPSEARCH_GPU_CPU_DECODERS", "many"), ("SHOPSEARCH_GPU_CPU_SHARE", "1.5"),
                                       ("SHOPSEARCH_GPU_READ_THREADS", "0"), ("SHOPSEARCH_NVJPEG_SPLIT", "x")])
def test_malformed_gpu_settings_are_config_errors_naming_the_variable(var, value):
    from shopsearch.config import Settings
    from shopsearch.errors import ConfigError

    with pytest.raises(ConfigError, match=var):  # at the edge, before any run starts
        Settings.from_env({var: value})


def test_gpu_settings_reach_the_executor_from_settings_only():
    from shopsearch.config import GpuTuning, Settings

    s = Settings.from_env({"SHOPSEARCH_GPU_CPU_DECODERS": "3", "SHOPSEARCH_GPU_CPU_SHARE": "0.25",
                           "SHOPSEARCH_GPU_PREFETCH": "5", "SHOPSEARCH_CUDA_GRAPHS": "0"})
    assert s.gpu == GpuTuning(cpu_decoders=3, cpu_share=0.25, prefetch=5, cuda_graphs=False)
    assert Settings.from_env({}).gpu == GpuTuning()


def test_zero_padded_jpeg_still_counts_as_whole_and_a_cut_one_does_not():
    import io

    buf = io.BytesIO()
    make_image(1, (64, 48)).save(buf, "JPEG")
    data = buf.getvalue()
    assert gpu_decode._ends_with_eoi(data) and gpu_decode._ends_with_eoi(data + bytes(300))
    assert not gpu_decode._ends_with_eoi(data[:-10]) and not gpu_decode._ends_with_eoi(data[:-10] + bytes(5))
