"""Large filtered scans read a float16 copy and stay exact (shopsearch/index/half_copy.py)."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from shopsearch.index import half_copy
from shopsearch.index.exact import exact_among, flat_storage
from shopsearch.index.half_copy import MARGIN, HalfCopy
from shopsearch.index.vector_index import VectorIndex


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _index(x: np.ndarray, index_type: str = "flat") -> VectorIndex:
    vi = VectorIndex(x.shape[1], index_type)
    vi.add(np.arange(len(x), dtype=np.int64) + 1, x)
    return vi


def _runs(bounds: list[tuple[int, int]]) -> np.ndarray:
    return np.concatenate([np.arange(a, b) for a, b in bounds]).astype(np.int64)


def _truth(q: np.ndarray, x: np.ndarray, positions: np.ndarray, k: int) -> np.ndarray:
    return positions[np.argsort(-(q @ x[positions].T), axis=1, kind="stable")[:, :k]]


def test_a_scan_of_the_copy_returns_the_exact_top_k_with_float32_scores():
    rng = np.random.default_rng(0)
    x = _unit(rng.standard_normal((30000, 48)))
    vi = _index(x)  # kept: the storage below belongs to it
    flat = flat_storage(faiss.downcast_index(vi.faiss_index.index))
    half = HalfCopy(flat)
    assert half.nbytes == 2 * x.size and abs(half.max_norm - 1.0) < 1e-5
    q = _unit(rng.standard_normal((3, 48)))
    cases = (_runs([(1000, 21000)]),  # a category: one long run
             _runs([(a, a + 150) for a in range(0, 30000, 500)]),  # a price range: a run per category
             _runs([(0, 5000), (9000, 9100), (20000, 26000)]))
    for positions in cases:
        assert half_copy.usable(positions, len(np.flatnonzero(np.diff(positions) != 1)) + 1)
        for nq, k in ((1, 10), (3, 80)):
            scores, pos = exact_among(flat, q[:nq], k, positions, half)
            assert (pos == _truth(q[:nq], x, positions, k)).all()
            # the scores are float32's, not the copy's
            want = np.take_along_axis(q[:nq] @ x.T, pos, axis=1)
            np.testing.assert_allclose(scores, want, rtol=0, atol=2e-6)
            assert np.array_equal(pos, exact_among(flat, q[:nq], k, positions)[1])


def test_the_bound_covers_every_rounding_of_the_copy():
    rng = np.random.default_rng(1)
    x = _unit(rng.standard_normal((5000, 384)) ** 3)  # peaky components, some tiny: float16's worst
    vi = _index(x)
    half = HalfCopy(flat_storage(faiss.downcast_index(vi.faiss_index.index)))
    decoded = x.astype(np.float16).astype(np.float32)  # IEEE half, round to nearest: what the copy holds
    flat = faiss.IndexFlatIP(384)
    flat.add(decoded)
    for q in _unit(rng.standard_normal((20, 384))):
        copy_scores = half.candidates(q, 10, np.arange(5000, dtype=np.int64), [0, 5000], [0])  # runs through the copy without error
        assert copy_scores is not None
        gap = np.abs(decoded @ q - x @ q).max()
        assert gap <= half.bound(q) / 4  # float16 rounds to 2^-11; the bound allows 2^-10 and sums


def test_more_near_ties_than_the_margin_fall_back_to_float32_and_stay_exact():
    rng = np.random.default_rng(2)
    x = _unit(rng.standard_normal((12000, 32)))
    x[2000:2000 + 3 * MARGIN] = x[100]  # a block of identical vectors straddling the k-th place
    vi = _index(x)  # kept: the storage below belongs to it
    flat = flat_storage(faiss.downcast_index(vi.faiss_index.index))
    half = HalfCopy(flat)
    positions = _runs([(0, 12000)])
    q = x[100:101] + 0.001 * rng.standard_normal((1, 32)).astype(np.float32)
    bounds, starts = [0, len(positions)], [0]
    assert half.candidates(q[0], 20, positions, bounds, starts) is None  # unsure: more ties than it can hold
    scores, pos = exact_among(flat, q, 20, positions, half)
    want_s, want_p = exact_among(flat, q, 20, positions)
    np.testing.assert_array_equal(scores, want_s)
    assert set(pos[0].tolist()) == set(want_p[0].tolist())


def test_small_or_scattered_sets_are_scored_on_float32_alone():
    rng = np.random.default_rng(3)
    positions = np.sort(rng.choice(50000, 8000, replace=False)).astype(np.int64)
    runs = len(np.flatnonzero(np.diff(positions) != 1)) + 1
    assert not half_copy.usable(positions, runs)  # scattered: a scanner call per position
    assert not half_copy.usable(_runs([(0, half_copy.MIN_SET - 1)]), 1)


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_a_served_index_searches_its_copy_and_drops_it_when_its_vectors_change(index_type):
    rng = np.random.default_rng(4)
    x = _unit(rng.standard_normal((20000, 24)))
    vi = _index(x, index_type)
    assert vi.make_half_copy() == 2 * x.size
    scanned = []
    real = HalfCopy.candidates

    def spy(self, *a, **kw):
        scanned.append(1)
        return real(self, *a, **kw)

    HalfCopy.candidates = spy
    try:
        q = _unit(rng.standard_normal((1, 24)))
        allowed = np.arange(3000, 13000, dtype=np.int64) + 1  # ids of positions 3000-12999: one run
        allowed.flags.writeable = False
        _, ids = vi.search(q, 30, allowed=allowed)
        assert scanned and ids[0].tolist() == (_truth(q, x, np.arange(3000, 13000), 30)[0] + 1).tolist()
        if index_type == "flat":  # the only type that removes in place: the copy would be stale
            vi.remove(np.arange(3000, 3100, dtype=np.int64) + 1)
            scanned.clear()
            allowed2 = np.arange(3100, 13000, dtype=np.int64) + 1
            allowed2.flags.writeable = False
            vi.search(q, 30, allowed=allowed2)
            assert not scanned
    finally:
        HalfCopy.candidates = real


def test_the_settings_decide_which_served_indexes_get_the_copy(tmp_path):
    from shopsearch.app import place_index
    from shopsearch.config import FP16_SCANS_MIN, Settings
    from shopsearch.errors import ConfigError

    assert Settings.from_env({}).fp16_scans == "auto"
    with pytest.raises(ConfigError, match="SHOPSEARCH_FP16_SCANS"):
        Settings.from_env({"SHOPSEARCH_FP16_SCANS": "yes"})
    x = _unit(np.random.default_rng(5).standard_normal((500, 8)))
    for mode, made in (("auto", False), ("off", False), ("on", True)):
        vi = _index(x)
        place_index(vi, Settings(data_dir=tmp_path, faiss_gpu="off", fp16_scans=mode))
        assert (vi.half_copy is not None) is made, mode
    assert FP16_SCANS_MIN > len(x)


def test_a_thread_reuses_its_scanner_and_threads_do_not_share_one():
    import threading

    rng = np.random.default_rng(6)
    x = _unit(rng.standard_normal((9000, 16)))
    vi = _index(x)
    half = HalfCopy(flat_storage(faiss.downcast_index(vi.faiss_index.index)))
    q = _unit(rng.standard_normal((4, 16)))
    first = half._scanner()
    assert all(half._scanner() is first for _ in range(3))  # no scanner per search: SWIG cannot free them
    seen = []
    t = threading.Thread(target=lambda: seen.append(half._scanner()))
    t.start()
    t.join()
    assert seen[0] is not first
    # queries from several threads at once keep their own query in their own scanner
    positions = _runs([(0, 9000)])
    want = [exact_among(flat_storage(faiss.downcast_index(vi.faiss_index.index)), q[i:i + 1], 10, positions)[1]
            for i in range(4)]
    got = [None] * 4

    def run(i: int) -> None:
        for _ in range(30):
            got[i] = half.candidates(q[i], 10, positions, [0, 9000], [0])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for i in range(4):
        assert set(want[i][0].tolist()) <= set(got[i].tolist())


@pytest.mark.parametrize("bad", [1e6, 1e30, np.inf, np.nan])
def test_vectors_outside_float16s_range_get_no_copy(bad):
    x = np.ones((70000, 4), dtype=np.float32)  # the bad one in the second block of the copy
    x[66000, 1] = bad
    vi = VectorIndex(4, "flat")
    vi.add(np.arange(len(x), dtype=np.int64), x)
    assert vi.make_half_copy() == 0 and vi.half_copy is None


def test_the_copy_holds_ieee_half_of_every_vector_and_their_largest_norm():
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((70000, 12)) * rng.uniform(0.001, 300, (70000, 1))).astype(np.float32)
    vi = VectorIndex(12, "flat")
    vi.add(np.arange(len(x), dtype=np.int64), x)
    assert vi.make_half_copy() == 2 * x.size
    half = vi.half_copy
    codes = half._codes.view(np.float16).reshape(x.shape).astype(np.float64)
    # round to nearest, as the bound assumes: never farther than numpy's IEEE cast (which breaks
    # ties to even, FAISS away from zero: both nearest)
    nearest = x.astype(np.float16).astype(np.float64)
    assert (np.abs(codes - x) <= np.abs(nearest - x)).all()
    assert (codes == nearest).mean() > 0.999
    assert half.max_norm == pytest.approx(float(np.linalg.norm(x, axis=1).max()), rel=1e-6)


def test_split_runs_cuts_the_positions_in_two_halves_that_cover_them_once():
    rng = np.random.default_rng(8)
    for _ in range(200):
        cuts = np.sort(rng.choice(np.arange(1, 400), rng.integers(0, 6), replace=False)).tolist()
        bounds = [0] + cuts + [400]
        starts = [int(s) for s in np.cumsum(rng.integers(1, 50, len(bounds) - 1)) * 1000]
        positions = np.concatenate([np.arange(s, s + b - a) for a, b, s in zip(bounds[:-1], bounds[1:], starts)])
        halves = half_copy.split_runs(bounds, starts)
        covered = []
        for hb, hs in halves:
            assert len(hb) == len(hs) + 1 and hb == sorted(hb) and all(b > a for a, b in zip(hb[:-1], hb[1:]))
            for a, b, s in zip(hb[:-1], hb[1:], hs):
                assert positions[a] == s and positions[b - 1] == s + b - a - 1  # still runs of consecutive positions
                covered += list(range(a, b))
        assert covered == list(range(400))
        assert halves[0][0][-1] == 200 and halves[1][0][0] == 200  # as many positions in each half


@pytest.mark.parametrize("busy", [False, True])
def test_a_large_scan_on_two_threads_finds_what_one_thread_finds(busy):
    import threading

    rng = np.random.default_rng(9)
    x = _unit(rng.standard_normal((40000, 32)))
    vi = _index(x)
    flat = flat_storage(faiss.downcast_index(vi.faiss_index.index))
    one, two = HalfCopy(flat), HalfCopy(flat, threads=2)
    threads_seen = set()
    real = HalfCopy._scan

    def spy(self, *a, **kw):
        threads_seen.add(threading.current_thread().name)
        return real(self, *a, **kw)

    HalfCopy._scan = spy
    if busy:  # another search holds the scan thread: this one scans alone and does not wait
        two._claim.acquire()
    try:
        positions = _runs([(500, 7000), (9000, 9050), (12000, 31000)])
        bounds = [0, 6500, 6550, len(positions)]
        starts = [500, 9000, 12000]
        assert len(positions) >= half_copy.SPLIT_SET
        for q in _unit(rng.standard_normal((10, 32))):
            got = two.candidates(q, 20, positions, bounds, starts)
            assert np.array_equal(got, one.candidates(q, 20, positions, bounds, starts))
            assert set(_truth(q[None], x, positions, 20)[0].tolist()) <= set(got.tolist())
    finally:
        HalfCopy._scan = real
        if busy:
            two._claim.release()
    assert (len(threads_seen) == 1) is busy  # a free scan thread took half of every scan


def test_served_indexes_scan_on_the_threads_the_settings_give():
    from shopsearch.config import Settings

    assert Settings.from_env({}).scan_threads == 0  # auto: two where the process has two cores
    assert Settings.from_env({"SHOPSEARCH_SCAN_THREADS": "1"}).scan_threads == 1
    x = _unit(np.random.default_rng(10).standard_normal((9000, 8)))
    vi = _index(x)
    vi.make_half_copy(threads=2)
    assert vi.half_copy.threads == 2
    vi1 = _index(x)
    vi1.make_half_copy()
    assert vi1.half_copy.threads == 1


def test_split_scans_stop_while_the_cores_are_busy_and_try_again_later(monkeypatch):
    import threading

    rng = np.random.default_rng(11)
    x = _unit(rng.standard_normal((20000, 16)))
    vi = _index(x)
    two = HalfCopy(flat_storage(faiss.downcast_index(vi.faiss_index.index)), threads=2)
    clock = [1000.0]
    monkeypatch.setattr(half_copy.time, "monotonic", lambda: clock[0])
    real = HalfCopy._scan
    seen: set[str] = set()

    def spy(self, *a, **kw):
        seen.add(threading.current_thread().name)
        return real(self, *a, **kw)

    monkeypatch.setattr(HalfCopy, "_scan", spy)
    positions = _runs([(0, 20000)])
    q = _unit(rng.standard_normal((1, 16)))[0]

    def threads_used() -> int:
        seen.clear()
        assert set(two.candidates(q, 10, positions, [0, 20000], [0]).tolist()) >= set(
            _truth(q[None], x, positions, 10)[0].tolist())
        return len(seen)

    two.judge_split(1.0, 1.0)  # one split that waited for a core (a hiccup): still splitting
    assert threads_used() == 2
    for _ in range(8):  # split after split waited: the cores are busy
        two.judge_split(1.0, 1.0)
    assert threads_used() == 1  # scans run alone a while ...
    clock[0] += half_copy.QUIET_S + 0.01
    assert threads_used() == 2  # ... then one splits again to see


def test_a_copy_made_before_a_fork_splits_scans_in_the_child():
    import os

    rng = np.random.default_rng(12)
    x = _unit(rng.standard_normal((20000, 16)))
    vi = _index(x)
    two = HalfCopy(flat_storage(faiss.downcast_index(vi.faiss_index.index)), threads=2)
    positions = _runs([(0, 20000)])
    q = _unit(rng.standard_normal((1, 16)))[0]
    want = two.candidates(q, 10, positions, [0, 20000], [0])  # the parent's scan thread made
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a split must not wait forever on the parent's thread
        ok = False
        try:
            two._quiet_until = 0.0
            got = two.candidates(q, 10, positions, [0, 20000], [0])
            ok = np.array_equal(got, want)
        finally:
            os.write(w, b"1" if ok else b"0")
            os._exit(0)
    os.close(w)
    import select

    ready, _, _ = select.select([r], [], [], 20)
    assert ready, "the child's split scan hung"
    assert os.read(r, 1) == b"1"
    os.waitpid(pid, 0)
