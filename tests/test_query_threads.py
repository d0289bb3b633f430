"""Each photo search's torch threads from the searches in flight on the whole server
(shopsearch/query_threads.py): counted across forked workers, set per request thread, and the
vectors unchanged whatever the count."""
from __future__ import annotations

import io
import multiprocessing
import threading

import numpy as np
import pytest
import torch
from torch import nn

from shopsearch.query_threads import InFlight, QueryThreads


def test_threads_split_the_cores_between_searches_in_flight():
    """A lone search gets every core; concurrent ones an even share, at least one thread each."""
    q = QueryThreads(cores=2)
    assert [q.threads_for(n) for n in (1, 2, 3, 8)] == [2, 1, 1, 1]
    q = QueryThreads(cores=8)
    assert [q.threads_for(n) for n in (1, 2, 3, 4, 5, 16)] == [8, 4, 2, 2, 1, 1]


def test_in_flight_counts_this_process_searches():
    f = InFlight(slots=2)
    assert f.enter() == 1
    assert f.enter() == 2
    f.leave()
    assert f.total() == 1
    f.leave()
    f.leave()  # an extra leave never goes below zero
    assert f.total() == 0


def _child(f: InFlight, ready, done) -> None:  # runs in a forked process
    ready.send(f.enter())
    done.recv()
    f.leave()
    ready.send(f.total())


def test_in_flight_is_one_count_across_forked_workers():
    """Made before the fork, as `shopsearch serve` makes it: a search in one worker is seen by
    the others, and a worker's slot is freed when it exits (even killed mid-search)."""
    f = InFlight(slots=2)
    f.enter()  # the parent (one worker) has a search in flight
    ctx = multiprocessing.get_context("fork")
    ready, ready_child = ctx.Pipe()
    done_child, done = ctx.Pipe()
    p = ctx.Process(target=_child, args=(f, ready_child, done_child))
    p.start()
    assert ready.recv() == 2  # the child's search and the parent's
    assert f.total() == 2
    done.send(True)
    assert ready.recv() == 1  # the child's search is over; the parent's goes on
    p.join(10)
    f.leave()
    assert f.total() == 0

    p = ctx.Process(target=_child, args=(f, ready_child, done_child))
    p.start()
    assert ready.recv() == 1
    p.kill()  # a worker killed by gunicorn's timeout never leaves
    p.join(10)
    assert f.total() == 1
    f.release(p.pid)  # the master's child_exit
    assert f.total() == 0


def test_a_process_without_a_slot_still_counts_its_own_searches():
    f = InFlight(slots=1)
    ctx = multiprocessing.get_context("fork")
    ready, ready_child = ctx.Pipe()
    done_child, done = ctx.Pipe()
    f.enter()  # the parent holds the only slot
    p = ctx.Process(target=_child, args=(f, ready_child, done_child))
    p.start()
    assert ready.recv() == 2  # its own search, plus the slotted parent's
    done.send(True)
    assert ready.recv() == 1
    p.join(10)
    f.leave()


def test_each_request_thread_sets_only_its_own_torch_threads():
    """torch's intra-op count is OpenMP's per-thread setting: a lone search runs on every core,
    and a second one in flight meanwhile gets one thread without changing the first one's."""
    q = QueryThreads(cores=2)
    inside, release, seen = threading.Event(), threading.Event(), {}

    def lone() -> None:
        with q.search() as n:
            seen["lone"] = (n, torch.get_num_threads())
            inside.set()
            release.wait(10)
            seen["lone_after"] = torch.get_num_threads()

    t = threading.Thread(target=lone)
    t.start()
    assert inside.wait(10)
    with q.search() as n:
        seen["second"] = (n, torch.get_num_threads())
    release.set()
    t.join(10)
    assert seen["lone"] == (2, 2)
    assert seen["second"] == (1, 1)
    assert seen["lone_after"] == 2  # the second search's setting did not reach the first thread
    assert q.in_flight.total() == 0


class _Net(nn.Module):
    """A small depthwise-separable convnet, shaped like the query model's blocks."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU6(), nn.Conv2d(16, 16, 3, 1, 1, groups=16),
                                  nn.Conv2d(16, 32, 1), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_vectors_are_the_same_whatever_the_threads_and_concurrency():
    """Searches switching between 2 threads (alone) and 1 (concurrent) in several request threads
    at once give the very vectors of a one-thread run, eager and TorchScript-frozen alike."""
    net = _Net().eval().to(memory_format=torch.channels_last)
    x = torch.randn(6, 3, 96, 96).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(net)))
        torch.set_num_threads(1)
        want = {name: [f(x[i:i + 1]).clone() for i in range(len(x))] for name, f in (("eager", net),
                                                                                       ("frozen", frozen))}
    q = QueryThreads(cores=2)
    errors: list[str] = []
    counts: set[int] = set()

    def client(c: int) -> None:
        for r in range(6):
            i = (c + r) % len(x)
            for name, f in (("eager", net), ("frozen", frozen)):
                with q.search() as n, torch.inference_mode():
                    counts.add(n)
                    got = f(x[i:i + 1])
                if not torch.equal(got, want[name][i]):
                    errors.append(f"{name} image {i} on {n} threads: max diff {(got - want[name][i]).abs().max()}")

    client(0)  # alone: 2 threads
    threads = [threading.Thread(target=client, args=(c,)) for c in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert counts == {1, 2}


def test_a_served_photo_search_is_counted_and_sets_its_threads(tmp_path):
    """The web app counts a photo search in flight for its whole request (the JSON API and the
    upload page), with the request thread's torch threads set for its model."""
    from tests.conftest import FakeEmbedder
    from tests.test_webapp import app_for, make_site, photo

    seen = []
    q = QueryThreads(cores=2)

    class Spy(FakeEmbedder):
        """Records the thread count and the searches in flight each query's forward ran with."""

        def encode_images(self, images, batch_size: int = 32) -> np.ndarray:
            seen.append((torch.get_num_threads(), q.in_flight.total()))
            return super().encode_images(images, batch_size)

    site = make_site(tmp_path, n=3)
    app = app_for(site, embedder=Spy(), QUERY_THREADS=q)
    client = app.test_client()
    r = client.post("/api/v1/search?k=1", data=photo(1), content_type="application/octet-stream")
    assert r.status_code == 200, r.data[:300]
    assert r.json["results"][0]["sku"] == "P1"
    r = client.post("/search", data={"image": (io.BytesIO(photo(2)), "q.png")}, content_type="multipart/form-data")
    assert r.status_code == 200, r.data[:300]
    assert seen == [(2, 1), (2, 1)]
    assert q.in_flight.total() == 0
    app.extensions["shopsearch"].close()
    off = app_for(site, embedder=Spy(), QUERY_THREADS="off", EAGER_LOAD=False)
    assert off.extensions["shopsearch"].query_threads is None


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_adaptive_threads_are_asked_for_and_never_override_the_operator(monkeypatch):
    """Fixed threads by default (a lone search's second thread waits on a core other jobs hold:
    slower on a partly loaded machine, benchmarks/RESULTS.md load_search_ab_query8_final_*);
    SHOPSEARCH_QUERY_THREADS=adaptive asks for them, unless the operator fixed the threads."""
    from shopsearch.config import Settings
    from shopsearch.errors import ConfigError
    from webapp.server import query_threads_for

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    assert query_threads_for(Settings.from_env({}), workers=2) is None
    q = query_threads_for(Settings.from_env({"SHOPSEARCH_QUERY_THREADS": "adaptive"}), workers=2)
    assert isinstance(q, QueryThreads) and q.in_flight.enter() == 1
    assert query_threads_for(Settings.from_env({"SHOPSEARCH_QUERY_THREADS": "adaptive",
                                                "SHOPSEARCH_TORCH_THREADS": "1"}), workers=2) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert query_threads_for(Settings.from_env({"SHOPSEARCH_QUERY_THREADS": "adaptive"}), workers=2) is None
    with pytest.raises(ConfigError, match="SHOPSEARCH_QUERY_THREADS"):
        Settings.from_env({"SHOPSEARCH_QUERY_THREADS": "many"})
