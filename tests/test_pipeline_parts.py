"""The parts `embed_items` is made of, each on its own: planning the work, writing chunks,
advancing the crash journal's window, choosing and running an executor, and the one
transform description the CPU split, the GPU replay and the draft size share."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from shopsearch.embedders.base import BatchEmbedder, TensorEmbedder, TransformEmbedder
from shopsearch.embedding.cache import VectorCache
from shopsearch.embedding.cpu import CpuExecutor
from shopsearch.embedding.gpu import GpuExecutor
from shopsearch.embedding.items import DRAFT_SIZE, WorkItem, failure_of, prepare
from shopsearch.embedding.journal import Quarantined
from shopsearch.embedding.pipeline import (ChunkWriter, EmbedReport, JournalWindow, PipelineConfig, RunSink,
                                           executor_for, plan_work, run_executor)
from shopsearch.embedding.preprocess import draft_size_for, split_preprocess
from shopsearch.embedding.transform import describe_transform
from shopsearch.errors import InvalidImageError
from shopsearch.workers import DIED
from tests.conftest import FakeEmbedder


def _it(k: str) -> WorkItem:
    return WorkItem(k * 64, f"/nowhere/{k}.jpg")


# -- plan the work ----------------------------------------------------------------------------
def test_plan_skips_cached_drops_duplicates_holds_quarantined_and_puts_suspects_first():
    a, b, c, d, e = (_it(k) for k in "abcde")
    held = {d.key: Quarantined(d.key, d.path, DIED, "2026-01-01T00:00:00Z")}
    plan = plan_work([a, b, c, b, d, e], cached={a.key}, quarantined=held, suspect_keys={e.key, d.key})
    assert plan.todo == (b, c)  # in order, the duplicate of b once
    assert plan.suspects == (e,)  # d is quarantined: held, not re-checked
    assert [(it, why.startswith(f"skipped: {DIED}")) for it, why in plan.held] == [(d, True)]
    assert plan.skipped == 1 and plan.images == 3


def test_plan_of_nothing_new():
    a = _it("a")
    plan = plan_work([a, a], cached={a.key}, quarantined={}, suspect_keys=set())
    assert (plan.todo, plan.suspects, plan.held, plan.skipped, plan.images) == ((), (), (), 2, 0)


# -- write chunks -----------------------------------------------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_chunk_writer_writes_full_chunks_and_old_vectors(tmp_path):
    cache = VectorCache(tmp_path, "fp", 2)
    clock = _Clock()
    w = ChunkWriter(cache, chunk_size=3, flush_s=10.0, clock=clock)
    vec = np.eye(2, dtype=np.float32)
    w.add(["k1", "k2"], vec)
    assert len(cache) == 0  # neither full nor old
    w.add(["k3", "k4"], vec)
    assert len(cache) == 4 and not w.keys  # full: one chunk of 4
    w.add(["k5"], vec[:1])
    clock.t = 10.0
    w.add(["k6"], vec[1:])  # the oldest unsaved vectors are 10 s old: saved though the chunk is not full
    assert len(cache) == 6
    w.flush()  # nothing pending: nothing written
    assert len(list(cache.dir.glob("chunk-*.npz"))) == 2
    np.testing.assert_array_equal(cache.get_many(["k6"]), vec[1:])


# -- advance the journal window -----------------------------------------------------------------
class _Journal:
    def __init__(self) -> None:
        self.windows: list[list[str]] = []

    def window(self, keys) -> None:
        self.windows.append(list(keys))


def test_journal_window_names_twice_the_horizon_and_moves_once_per_horizon():
    journal = _Journal()
    order = [str(i) for i in range(10)]
    win = JournalWindow(journal, order, horizon=2)
    win.advance(0)
    assert journal.windows == [order[0:4]]
    win.advance(1)  # still short of the middle: the window is still true
    assert len(journal.windows) == 1
    win.advance(1)
    assert journal.windows[-1] == order[2:6]
    win.advance(5)
    assert journal.windows[-1] == order[7:10]
    win.advance(3)  # all done: nothing in flight to name
    assert len(journal.windows) == 3


# -- run an executor --------------------------------------------------------------------------
def test_executor_for_picks_by_the_config():
    emb = FakeEmbedder()
    cpu = executor_for(emb, PipelineConfig(4, 2, "thread"))
    assert isinstance(cpu, CpuExecutor) and cpu.horizon > 4
    gpu = executor_for(emb, PipelineConfig(4, 2, "gpu"))
    assert isinstance(gpu, GpuExecutor) and gpu.horizon > 4


def test_run_executor_feeds_writer_report_quarantine_and_window(tmp_path):
    a, b, c = _it("a"), _it("b"), _it("c")
    died, bad = [], []

    class Scripted:  # an executor reporting a fixed outcome: the sink's bookkeeping alone
        horizon = 1

        def run(self, items, on_vectors, on_failure):
            on_vectors([a.key], np.ones((1, 2), np.float32))
            on_failure(b, DIED)
            on_failure(c, "corrupt or truncated image")
            return {"model": 1.0}

    class Journal(_Journal):
        def quarantine(self, key, path, reason):
            died.append((key, reason))

    cache, journal, report = VectorCache(tmp_path, "fp", 2), Journal(), EmbedReport()
    writer = ChunkWriter(cache, 100, 100.0)
    bar = SimpleNamespace(update=lambda n: bad.append(n))
    window = JournalWindow(journal, [a.key, b.key, c.key], horizon=1)
    stages = run_executor(Scripted(), [a, b, c], RunSink(report, writer, journal, bar, window))  # type: ignore[arg-type]
    writer.flush()
    assert stages == {"model": 1.0}
    assert report.embedded == 1 and [it for it, _ in report.failed] == [b, c] and a.key in cache
    assert died == [(b.key, DIED)]  # only the image that killed its decoder is quarantined
    assert sum(bad) == 3
    assert journal.windows[0] == [a.key, b.key]  # written before the executor starts


# -- low-level pieces ---------------------------------------------------------------------------
def test_prepare_reports_failures_as_values(tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    for path in (junk, tmp_path / "gone.jpg"):
        item = WorkItem("0" * 64, str(path))
        got, why = prepare(item, lambda im: pytest.fail("a file that does not decode is never preprocessed"))
        assert got is item and isinstance(why, str) and why
    assert failure_of(InvalidImageError("not an image")) == "not an image"
    assert failure_of(ValueError("odd")) == "ValueError: odd"


# -- one transform description --------------------------------------------------------------------
def _timm(**kw):
    from timm.data import create_transform

    return create_transform(input_size=(3, 224, 224), interpolation="bicubic", **kw)


def test_one_description_feeds_the_split_the_gpu_and_the_draft_size():
    tf = _timm(crop_pct=0.875, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    spec = describe_transform(tf)
    assert spec is not None and spec.cpu_split and spec.gpu
    assert spec.resize == (256, "bicubic") and spec.crop == (224, 224) and spec.draft_size == 256
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.5, 0.5, 0.5)
    assert describe_transform(tf) is spec  # read once per transform object
    emb = SimpleNamespace(transform=tf, encode_tensor=lambda x: x, device="cpu")
    split = split_preprocess(emb)
    assert split is not None and (split.mean, split.std, split.draft_size) == (spec.mean, spec.std, 256)
    assert draft_size_for(emb) == 256
    # without encode_tensor the embedder's own preprocess runs: JPEGs at the default draft size
    assert split_preprocess(SimpleNamespace(transform=tf, device="cpu")) is None
    assert draft_size_for(SimpleNamespace(transform=tf, device="cpu")) == DRAFT_SIZE
    assert split_preprocess(SimpleNamespace(transform=tf), require_encode_tensor=False) is not None


def test_a_transform_neither_can_replay_has_no_description():
    from torchvision import transforms as T

    assert describe_transform(lambda im: im) is None
    assert describe_transform(T.Compose([T.Resize(224), T.RandomHorizontalFlip(), T.ToTensor()])) is None
    # nearest-neighbour resizing: split on the CPU (PIL runs it as it is), not replayed on the GPU
    spec = describe_transform(T.Compose([T.Resize(224, interpolation=T.InterpolationMode.NEAREST),
                                         T.CenterCrop(224), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)]))
    assert spec is not None and spec.cpu_split and not spec.gpu
    # normalising before ToTensor cannot be split (and there is no tensor to normalise)
    spec = describe_transform(T.Compose([T.Resize(224), T.CenterCrop(224), T.Normalize([0.5] * 3, [0.5] * 3)]))
    assert spec is not None and not spec.cpu_split and spec.gpu and spec.draft_size is None


def test_the_batch_protocols_describe_torch_models_and_not_plain_ones():
    from tests.test_compile import _tiny
    from tests.test_indexer_pipeline import MeanColour

    assert not isinstance(FakeEmbedder(), TransformEmbedder)
    assert isinstance(MeanColour(), TransformEmbedder) and not isinstance(MeanColour(), TensorEmbedder)
    assert isinstance(_tiny(), BatchEmbedder)  # TorchEmbedder: tensors, compile, CUDA graphs, precision
