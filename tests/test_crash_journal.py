"""A decoder that crashes inside the indexing process (threaded decoding, nvJPEG) kills that
run; the next run must find the image that did it instead of crashing on it again: it
decodes the dead run's in-flight images in separate processes first, quarantines the
culprit by content hash, and embeds everything else. Runs here are real processes that
really die (SIGSEGV), forked from a server that imported the modules once (tests/preforked.py)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shopsearch.embedding.cache import VectorCache
from shopsearch.embedding.journal import CrashJournal
from shopsearch.embedding.pipeline import PipelineConfig, WorkItem, embed_items
from shopsearch.embedding.tuning import inflight_horizon
from shopsearch.workers import DIED
from tests.conftest import REPO, FakeEmbedder, make_image, sha
from tests.preforked import run_script
from tests.test_indexer_pipeline import MeanColour

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals and fork"),
              # the reference vectors are MeanColour's timm transform, image by image, in this process
              pytest.mark.usefixtures("one_torch_thread")]

MARK = b"POISON"
#: past two journal windows of the CPU executors (2 x 148 images at batch 4, 2 workers)
N, POISON_AT = 400, 330

# One indexing run in its own process. The decoder it uses segfaults on any file holding
# MARK: PIL's decode_source for the CPU executors, the batch JPEG decoder for "gpu".
RUN = r"""
import json, os, signal, sys
from pathlib import Path
from shopsearch.config import Settings
from shopsearch.embedding import gpu
from shopsearch.embedding import items as stages
from shopsearch.embedding.cache import VectorCache
from shopsearch.embedding.pipeline import PipelineConfig, WorkItem, embed_items
from shopsearch.embedding.tuning import inflight_horizon
from tests.conftest import FakeEmbedder
from tests.test_indexer_pipeline import MeanColour

def die():  # as a decoder crash does: the crash journal's fault handler records it
    os.kill(os.getpid(), signal.SIGSEGV)

executor, cache_dir, rows = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if executor == "gpu":
    import torch
    torch.set_num_threads(1)  # the replay's batches are tiny: more threads only spin on a shared CPU
    real_nvjpeg = gpu.nvjpeg_decode
    def nvjpeg(datas, *a):
        if any(b"POISON" in bytes(d.numpy()) for d in datas):
            die()
        return real_nvjpeg(datas, *a)
    gpu.nvjpeg_decode = nvjpeg
    real_run = gpu.run_gpu_batches  # the GPU executor, replayed on the CPU as in test_gpu_lanes
    gpu.run_gpu_batches = lambda *a, **kw: real_run(*a, device="cpu", **kw)
    emb, fp, dim = MeanColour(), "mean-colour", 3
else:
    real = stages.decode_source
    def decode_source(src, *a, **kw):
        if isinstance(src, str) and b"POISON" in Path(src).read_bytes():
            die()
        return real(src, *a, **kw)
    stages.decode_source = decode_source
    emb, fp, dim = FakeEmbedder(), "fake-grid4x4", 48
settings = Settings.from_env()  # this script is an edge: SHOPSEARCH_* reach the pipeline through it
rep = embed_items(emb, [WorkItem(*r) for r in rows], VectorCache(Path(cache_dir), fp, dim), batch_size=4,
                  workers=2, chunk_size=4, progress=False, executor=executor,
                  compile=settings.pipeline.compile, gpu=settings.gpu)
print(json.dumps({"embedded": rep.embedded, "failed": [[it.key, r] for it, r in rep.failed]}))
"""


def _run(executor: str, cache: Path, items: list[WorkItem]) -> subprocess.CompletedProcess:
    env = {**os.environ, "SHOPSEARCH_GPU_CPU_DECODERS": "0", "SHOPSEARCH_COMPILE": "off"}
    rows = json.dumps([[it.key, it.path, it.image_id] for it in items])
    return run_script(RUN, executor, str(cache), rows, cwd=REPO, env=env, timeout=300)


def _files(d: Path, n: int, poison_at: int, ext: str) -> tuple[list[WorkItem], WorkItem]:
    """n images; the one at `poison_at` carries MARK (a JPEG comment, or bytes after a PNG's end)."""
    d.mkdir()
    items = []
    for i in range(n):
        p = d / f"{i:03d}.{ext}"
        img = make_image(i, (160, 120))
        if ext == "jpg":
            img.save(p, quality=90, comment=MARK if i == poison_at else b"")
        else:
            img.save(p)
            if i == poison_at:
                p.write_bytes(p.read_bytes() + MARK)
        items.append(WorkItem(sha(p), str(p), i + 1))
    return items, items[poison_at]


def _cache(root: Path, executor: str) -> VectorCache:
    return VectorCache(root, "mean-colour", 3) if executor == "gpu" else VectorCache(root, "fake-grid4x4", 48)


@pytest.mark.parametrize("executor,ext", [("thread", "png"), ("gpu", "jpg")])
def test_the_run_after_a_decoder_crash_finds_the_culprit_and_finishes(tmp_path, executor, ext):
    items, bad = _files(tmp_path / "imgs", N, POISON_AT, ext)
    root = tmp_path / "vectors"
    first = _run(executor, root, items)
    assert first.returncode == -signal.SIGSEGV, first.stderr[-2000:]
    cache = _cache(root, executor)
    saved = len(cache)
    assert 0 < saved < POISON_AT  # chunks before the crash were kept
    journals = list(cache.dir.glob("inflight-*.txt"))
    names = journals[0].read_text().split()
    assert len(journals) == 1 and bad.key in names
    # a window of the run's order, not the whole rest
    assert items[0].key not in names and len(names) <= 2 * inflight_horizon(PipelineConfig(4, 2, executor))

    second = _run(executor, root, items)
    assert second.returncode == 0, second.stderr[-3000:]
    out = json.loads(second.stdout)
    cache = _cache(root, executor)
    if executor == "gpu":  # PIL, in a separate process, decodes what crashed nvJPEG
        assert out == {"embedded": N - saved, "failed": []}
        assert bad.key in cache
    else:
        assert out == {"embedded": N - 1 - saved, "failed": [[bad.key, DIED]]}
        assert bad.key not in cache
        assert list(CrashJournal(cache.dir).quarantined()) == [bad.key]
    assert not list(cache.dir.glob("inflight-*"))
    good = [it for it in items if it.key in cache]
    ref = _cache(tmp_path / "ref", executor)
    emb = FakeEmbedder() if executor != "gpu" else MeanColour()
    embed_items(emb, good, ref, progress=False, executor="inline")
    keys = [it.key for it in good]
    np.testing.assert_allclose(cache.get_many(keys), ref.get_many(keys), atol=2e-3)

    if executor != "gpu":
        # quarantined: not decoded again (it would crash this run too), until its content changes
        third = _run(executor, root, items)
        assert third.returncode == 0, third.stderr[-3000:]
        (key, reason), = json.loads(third.stdout)["failed"]
        assert key == bad.key and reason.startswith("skipped: " + DIED) and "earlier run" in reason
        fixed = Path(bad.path)
        make_image(N + 1, (160, 120)).save(fixed)  # a seed no other image has
        renewed = [WorkItem(sha(fixed), bad.path, bad.image_id) if it is bad else it for it in items]
        fourth = _run(executor, root, renewed)
        assert fourth.returncode == 0 and json.loads(fourth.stdout) == {"embedded": 1, "failed": []}


def test_a_live_runs_journal_is_not_taken_for_a_crash(tmp_path):
    """Two runs on one cache: the other's journal names images it is decoding right now."""
    other = CrashJournal(tmp_path)
    other.path = tmp_path / f"inflight-{other.host}-{os.getppid()}.txt"  # a process that is alive
    other.window(["a", "b"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = tmp_path / f"inflight-{other.host}-{int(dead.stdout)}.txt"
    gone.write_text("c\nd\n")
    files, keys = CrashJournal(tmp_path).stale()
    assert files == [gone] and keys == {"c", "d"}


def test_a_dead_runs_journal_naming_nothing_left_to_do_is_dropped(tmp_path, image_dir):
    """Its suspects were embedded meanwhile (or left the catalogue): nothing to re-check, and
    the journal must not linger to be re-read by every later run."""
    items = [WorkItem(sha(p), str(p)) for p in image_dir(12)]
    cache = VectorCache(tmp_path / "v", "fake-grid4x4", 48)
    embed_items(FakeEmbedder(), items[:6], cache, progress=False, executor="inline")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = cache.dir / f"inflight-{CrashJournal(cache.dir).host}-{int(dead.stdout)}.txt"
    gone.write_text("\n".join([it.key for it in items[:6]] + ["f" * 64]) + "\n")
    rep = embed_items(FakeEmbedder(), items, cache, progress=False, executor="thread")
    assert (rep.embedded, rep.skipped, rep.failed) == (6, 6, [])
    assert not gone.exists() and not list(cache.dir.glob("inflight-*"))


def test_a_clean_run_leaves_no_journal_even_when_it_raises(tmp_path, image_dir):
    items = [WorkItem(sha(p), str(p)) for p in image_dir(20)]
    cache = VectorCache(tmp_path / "v", "fake-grid4x4", 48)

    class Boom(FakeEmbedder):
        def encode_batch(self, batch):
            raise RuntimeError("model failed")

    with pytest.raises(RuntimeError):
        embed_items(Boom(), items, cache, batch_size=4, progress=False, executor="thread")
    assert not list(cache.dir.glob("inflight-*"))
    rep = embed_items(FakeEmbedder(), items, cache, batch_size=4, progress=False, executor="thread")
    assert (rep.embedded, rep.failed) == (20, [])
    assert not list(cache.dir.glob("inflight-*"))


def test_png_with_trailing_bytes_still_decodes(tmp_path):
    """The marker the crash tests append must leave the PNG decodable (else the test proves nothing)."""
    p = tmp_path / "x.png"
    make_image(1).save(p)
    p.write_bytes(p.read_bytes() + MARK)
    assert Image.open(p).convert("RGB").size == (96, 96)


# `shopsearch ...` in a process whose PIL decoder segfaults on files holding MARK.
# A crash in the CLI's own process (threaded decoding) first waits until this run has saved
# a vector chunk (at most 60 s): the decoders run up to a horizon ahead of the chunk being
# written and fsynced, so without the wait whether anything was saved before the crash was a
# matter of the machine's timing (on CI once, nothing was). The rerun's separate decoding
# processes crash at once.
CLI = r"""
import os, signal, sys, time
from pathlib import Path
from shopsearch.embedding import items as stages

data = Path(sys.argv[sys.argv.index("--data-dir") + 1])
chunks = lambda: len(list(data.rglob("chunk-*.npz")))
before, main_pid = chunks(), os.getpid()
real = stages.decode_source
def decode_source(src, *a, **kw):
    if isinstance(src, str) and b"POISON" in Path(src).read_bytes():
        deadline = time.monotonic() + 60
        while os.getpid() == main_pid and chunks() <= before and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGSEGV)
    return real(src, *a, **kw)
stages.decode_source = decode_source
from indexer.cli import main
main()
"""


def test_cli_build_killed_by_a_decoder_crash_keeps_serving_and_the_rerun_completes(tmp_path):
    from shopsearch.catalogue.records import ImageRecord, ProductRecord
    from shopsearch.catalogue.store import CatalogueStore
    from shopsearch.index import IndexStore

    data = tmp_path / "data"
    data.mkdir()
    cat = CatalogueStore.open(f"sqlite:///{data / 'catalogue.db'}")
    items, bad = _files(tmp_path / "imgs", 200, 150, "png")

    def add(its):
        for it in its:
            cat.upsert_product(ProductRecord(f"S{it.image_id}", "x", images=(ImageRecord(it.path, sha256=it.key),)))

    def shopsearch(*args):
        return run_script(CLI, "--data-dir", str(data), *args, cwd=REPO, timeout=300,
                          env={**os.environ, "SHOPSEARCH_COMPILE": "off"})

    add(items[:100])
    seed = shopsearch("index", "build", "--model", "colorhist", "--json")
    assert seed.returncode == 0, seed.stderr[-2000:]
    serving = IndexStore(data / "index").current_id()
    add(items[100:])
    crashed = shopsearch("index", "update", "--chunk-size", "16", "--json")
    assert crashed.returncode == -signal.SIGSEGV
    assert IndexStore(data / "index").current_id() == serving  # the old build kept serving

    rerun = shopsearch("index", "update", "--json")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    report = json.loads(rerun.stdout)
    assert report["vectors"] == 199 and report["added"] == 100  # the culprit planned, then failed
    assert [(f["path"], f["reason"]) for f in report["failed"]] == [(bad.path, DIED)]
    assert report["embedded"] < 99  # what the crashed run had embedded was reused
    img = cat.get_product(f"S{bad.image_id}").images[0]
    assert (img.status, img.error) == ("invalid", DIED)


def test_a_window_left_unrenamed_by_a_dead_run_is_read_and_dropped(tmp_path, image_dir):
    """A run that died while writing its next window leaves `inflight-*.tmp` beside (or
    instead of) its journal: its keys are suspects too, and the file must not linger."""
    items = [WorkItem(sha(p), str(p)) for p in image_dir(8)]
    cache = VectorCache(tmp_path / "v", "fake-grid4x4", 48)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stem = f"inflight-{CrashJournal(cache.dir).host}-{int(dead.stdout)}"
    cache.dir.mkdir(parents=True, exist_ok=True)
    (cache.dir / f"{stem}.txt").write_text(items[0].key + "\n")
    (cache.dir / f"{stem}.tmp").write_text(items[1].key + "\n" + items[2].key[:10])
    files, keys = CrashJournal(cache.dir).stale()
    assert {items[0].key, items[1].key} <= keys
    rep = embed_items(FakeEmbedder(), items, cache, progress=False, executor="thread")
    assert (rep.embedded, rep.failed) == (8, [])
    assert not list(cache.dir.glob("inflight-*"))


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


def test_a_killed_runs_journal_names_no_suspects_unless_killed_twice_on_the_same_images(tmp_path):
    """An empty fault file: the run was killed from outside (SIGKILL), no decoder crashed. The
    same images in flight at two kills in a row (a decode the OOM killer stops) are suspects."""
    journal = CrashJournal(tmp_path)
    first = tmp_path / f"inflight-{journal.host}-{_dead_pid()}.txt"
    first.write_text("a\nb\nc\n")
    CrashJournal.fault_path(first).write_text("")
    files, keys = journal.stale()
    assert files == [first] and keys == set()
    CrashJournal.forget(files)
    assert not first.exists() and not CrashJournal.fault_path(first).exists()
    second = tmp_path / f"inflight-{journal.host}-{_dead_pid()}.txt"
    second.write_text("c\nd\n")
    CrashJournal.fault_path(second).write_text("")
    assert journal.stale() == ([second], {"c"})
    crashed = tmp_path / f"inflight-{journal.host}-{_dead_pid()}.txt"  # a fatal signal was recorded
    crashed.write_text("e\nf\n")
    CrashJournal.fault_path(crashed).write_text("Fatal Python error: Segmentation fault\n")
    files, keys = journal.stale()
    assert set(files) == {second, crashed} and keys == {"c", "e", "f"}


def test_a_killed_runs_unrenamed_window_is_one_journal_with_its_own(tmp_path):
    """Killed while renaming its window: the .txt and the .tmp are one run, not two killed runs
    whose overlapping windows would make every image a suspect."""
    journal = CrashJournal(tmp_path)
    run = tmp_path / f"inflight-{journal.host}-{_dead_pid()}.txt"
    run.write_text("a\nb\n")
    run.with_suffix(".tmp").write_text("b\nc\n")
    CrashJournal.fault_path(run).write_text("")
    files, keys = journal.stale()
    assert set(files) == {run, run.with_suffix(".tmp")} and keys == set()
    CrashJournal.forget(files)
    assert not list(tmp_path.glob("inflight-*")) and not list(tmp_path.glob("fault-*"))
