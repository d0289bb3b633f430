"""VectorIndex and IndexStore: exact ground truth on seeded synthetic vectors, atomic publish."""
from __future__ import annotations

import numpy as np
import pytest

from shopsearch.errors import IndexCorruptError, IndexNotFoundError, ModelMismatchError
from shopsearch.index import IndexManifest, IndexStore, VectorIndex, check_model, choose_index_type


def _data(n=500, d=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _manifest(build_id="b1", fp="fp-1"):
    return IndexManifest(build_id, "fake", fp, 32, 0, "flat", "2026-01-01T00:00:00Z")


def _keys(index: VectorIndex) -> dict[int, str]:
    """A content hash per id, as the builder passes them."""
    return {int(i): f"{int(i):064x}" for i in index.ids()}


def test_flat_search_matches_brute_force():
    x = _data()
    ids = np.arange(1000, 1500, dtype=np.int64)
    vi = VectorIndex(32, "flat")
    vi.add(ids, x)
    q = _data(20, seed=1)
    scores, got = vi.search(q, 5)
    truth = np.argsort(-(q @ x.T), axis=1)[:, :5]
    assert (got == ids[truth]).all()
    assert np.allclose(scores[:, 0], (q @ x.T).max(axis=1), atol=1e-5)


def test_remove_and_ids():
    x = _data(50)
    vi = VectorIndex(32)
    vi.add(np.arange(50), x)
    assert vi.remove(np.array([3, 4, 99])) == 2
    assert len(vi) == 48 and 3 not in set(vi.ids())
    _, got = vi.search(x[3:4], 1)
    assert got[0, 0] != 3


@pytest.mark.parametrize("itype", ["hnsw", "ivfpq", "ivfflat"])
def test_ann_types_build_and_find_neighbours(itype, tmp_path):
    x = _data(1500)
    vi = VectorIndex(32, itype, expected_size=1500)
    vi.add(np.arange(1500), x)
    vi.nprobe = 64
    _, got = vi.search(x[:50], 10)
    # a vector's nearest neighbour is itself; ANN must find it nearly always
    assert (got[:, 0] == np.arange(50)).mean() >= 0.9
    # "more like this" reads stored vectors back, also after a save/load (IVF needs a direct map)
    vi.save(tmp_path, _manifest())
    loaded, _ = VectorIndex.load(tmp_path)
    for index in (vi, loaded):
        assert np.dot(index.reconstruct(7), x[7]) > 0.95  # PQ / SQ8 codes are lossy, not wrong
        with pytest.raises(RuntimeError):
            index.reconstruct(99_999)


def test_choose_index_type_by_size():
    assert choose_index_type(1000) == "flat"
    assert choose_index_type(500_000) == "hnsw"
    assert choose_index_type(5_000_000) == "ivfpq"


def test_dim_mismatch_is_clear():
    vi = VectorIndex(32)
    vi.add(np.arange(5), _data(5))
    with pytest.raises(ModelMismatchError):
        vi.search(np.zeros((1, 16), np.float32), 1)


def test_store_publish_load_rollback(tmp_path):
    store = IndexStore(tmp_path / "index")
    with pytest.raises(IndexNotFoundError):
        store.load_current()
    a = VectorIndex(32)
    a.add(np.arange(10), _data(10))
    store.publish(a, _manifest("b1"), _keys(a))
    b = VectorIndex(32)
    b.add(np.arange(20), _data(20))
    store.publish(b, _manifest("b2"), _keys(b))
    vi, m = store.load_current()
    assert m.build_id == "b2" and len(vi) == 20 and m.count == 20
    assert store.rollback() == "b1"
    vi, m = store.load_current()
    assert m.build_id == "b1" and len(vi) == 10
    assert not list((tmp_path / "index" / "builds").glob(".staging-*"))


def test_every_build_keeps_its_keys_and_a_build_without_them_is_corrupt(tmp_path):
    store = IndexStore(tmp_path / "index")
    a = VectorIndex(32)
    a.add(np.arange(10), _data(10))
    store.publish(a, _manifest("b1"), _keys(a))
    assert store.load_keys("b1") == _keys(a)
    with pytest.raises(IndexCorruptError, match="does not match the index ids"):
        store.publish(a, _manifest("b2"), dict(list(_keys(a).items())[:5]))
    assert store.current_id() == "b1"
    (tmp_path / "index" / "builds" / "b1" / "keys.npz").unlink()
    with pytest.raises(IndexCorruptError, match="keys file"):
        store.load_keys("b1")


def test_corrupt_index_file_is_detected(tmp_path):
    store = IndexStore(tmp_path / "index")
    a = VectorIndex(32)
    a.add(np.arange(10), _data(10))
    store.publish(a, _manifest("b1"), _keys(a))
    f = tmp_path / "index" / "builds" / "b1" / "index.faiss"
    f.write_bytes(f.read_bytes()[:-40])
    with pytest.raises(IndexCorruptError):
        store.load_current()


def test_half_written_build_never_serves(tmp_path, monkeypatch):
    """A crash while writing a new build leaves the old one serving."""
    store = IndexStore(tmp_path / "index")
    a = VectorIndex(32)
    a.add(np.arange(10), _data(10))
    store.publish(a, _manifest("b1"), _keys(a))
    b = VectorIndex(32)
    b.add(np.arange(20), _data(20))

    def crash(*_a, **_k):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(VectorIndex, "load", classmethod(lambda cls, *a, **k: crash()))
    with pytest.raises(KeyboardInterrupt):
        store.publish(b, _manifest("b2"), _keys(b))
    monkeypatch.undo()
    vi, m = store.load_current()
    assert m.build_id == "b1" and len(vi) == 10


def test_model_mismatch_is_clear():
    with pytest.raises(ModelMismatchError, match="rebuild"):
        check_model(_manifest(fp="fp-1"), "fp-2")
    check_model(_manifest(fp="fp-1"), "fp-1")


def test_a_single_query_runs_faiss_on_one_thread_and_restores_the_count(monkeypatch):
    import threading

    import faiss

    vi = VectorIndex(8, "flat")
    vi.add(np.arange(10, dtype=np.int64), np.eye(10, 8, dtype=np.float32))
    seen: list[int] = []
    real = VectorIndex._search

    def spy(self, *args):
        seen.append(faiss.omp_get_max_threads())
        return real(self, *args)

    monkeypatch.setattr(VectorIndex, "_search", spy)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        _, ids = vi.search(np.eye(1, 8, dtype=np.float32), 1)
        vi.search(np.eye(2, 8, dtype=np.float32), 1)  # a batch keeps the threads
        other: list[int] = []
        t = threading.Thread(target=lambda: (vi.search(np.eye(1, 8, dtype=np.float32), 1),
                                             other.append(faiss.omp_get_max_threads())))
        t.start()
        t.join()
        assert ids[0, 0] == 0 and seen[:2] == [1, 2] and faiss.omp_get_max_threads() == 2
        assert seen[2] == 1 and other == [faiss.omp_get_max_threads()]
    finally:
        faiss.omp_set_num_threads(before)


def test_an_unknown_index_type_or_too_few_vectors_to_train_is_a_config_error_in_one_line():
    from shopsearch.errors import ConfigError

    with pytest.raises(ConfigError, match=r"index type 'bogus' is not one .*\(could not parse index string bogus\)$"):
        VectorIndex(8, "bogus")
    ivf = VectorIndex(8, "IVF4,Flat")
    with pytest.raises(ConfigError, match=r"cannot be trained on 3 vectors \(Number of training points \(3\)") as e:
        ivf.train(np.eye(8, dtype=np.float32)[:3])
    assert "faiss::" not in str(e.value) and ".cpp" not in str(e.value) and "--index flat" in str(e.value)
