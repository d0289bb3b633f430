"""The vector cache reads chunk by chunk: its key index says what is cached without reading a
vector, and a lookup reads only the chunks that hold the keys asked for."""
from __future__ import annotations

import numpy as np
import pytest

from shopsearch.embedding import cache as cache_mod
from shopsearch.embedding.cache import KEY_INDEX, VectorCache, write_chunk_file


@pytest.fixture(autouse=True)
def _save_the_index_at_once(monkeypatch):
    """Small caches: the key index is written at every change, as a big one is past the thresholds."""
    monkeypatch.setattr(cache_mod, "SAVE_AFTER_CHUNKS", 1)
    monkeypatch.setattr(cache_mod, "SAVE_AFTER_KEYS", 1)


def _key(i: int) -> str:
    return f"{i:064x}"


def _fill(root, chunks: int = 4, per: int = 5, dim: int = 3) -> VectorCache:
    cache = VectorCache(root, "fp", dim)
    for c in range(chunks):
        keys = [_key(c * per + j) for j in range(per)]
        cache.put(keys, np.full((per, dim), c * per, np.float32) + np.arange(per, dtype=np.float32)[:, None])
    return cache


def test_lookups_read_only_the_chunks_holding_the_keys(tmp_path):
    _fill(tmp_path)
    cache = VectorCache(tmp_path, "fp", 3)  # another process: nothing in memory
    assert cache.present([_key(0), _key(19), _key(20)]).tolist() == [True, True, False]
    assert _key(7) in cache and _key(99) not in cache and len(cache) == 20
    assert cache._vectors == {}  # no vector was read to answer that
    got = cache.get_many([_key(7), _key(6)])
    assert got[:, 0].tolist() == [7.0, 6.0]
    assert len(cache._vectors) == 1  # one chunk of four
    assert (cache.dir / KEY_INDEX).is_file()


def test_chunks_written_after_the_index_are_found_and_a_removed_chunk_is_dropped(tmp_path):
    cache = _fill(tmp_path, chunks=2)
    VectorCache(tmp_path, "fp", 3).present([_key(0)])  # saves the key index of the two chunks
    write_chunk_file(cache.dir, [_key(100)], np.ones((1, 3), np.float32))  # e.g. a Ray worker's chunk
    write_chunk_file(cache.dir, [_key(101)], np.ones((1, 4), np.float32))  # another dimension: ignored
    fresh = VectorCache(tmp_path, "fp", 3)
    assert fresh.present([_key(100), _key(101), _key(9)]).tolist() == [True, False, True]
    first = sorted(cache.dir.glob("chunk-*.npz"))
    for f in first:
        with np.load(f) as z:
            if _key(0) in z["keys"].tolist():
                f.unlink()
    again = VectorCache(tmp_path, "fp", 3)
    assert again.present([_key(0), _key(9), _key(100)]).tolist() == [False, True, True]
    assert again.get_many([_key(9)])[0, 0] == 9.0


def test_a_put_is_visible_at_once_and_missing_keys_raise(tmp_path):
    cache = _fill(tmp_path, chunks=1)
    cache.put([_key(50)], np.full((1, 3), 50, np.float32))
    assert cache.present([_key(50), _key(1)]).all() and len(cache) == 6
    cache.save_index()  # folded into the saved index: another process reads no chunk's keys
    assert VectorCache(tmp_path, "fp", 3).present([_key(50)]).all()
    assert cache.get_many([_key(50), _key(1)])[:, 0].tolist() == [50.0, 1.0]
    try:
        cache.get_many([_key(77)])
    except KeyError:
        pass
    else:
        raise AssertionError("a key never cached was answered")


def test_a_small_update_does_not_rewrite_the_key_index(tmp_path, monkeypatch):
    _fill(tmp_path, chunks=3)
    VectorCache(tmp_path, "fp", 3).present([_key(0)])  # indexed
    index = tmp_path / VectorCache(tmp_path, "fp", 3).dir.name / KEY_INDEX
    before = index.stat().st_mtime_ns
    monkeypatch.setattr(cache_mod, "SAVE_AFTER_CHUNKS", 16)
    monkeypatch.setattr(cache_mod, "SAVE_AFTER_KEYS", 50_000)
    c = VectorCache(tmp_path, "fp", 3)
    c.put([_key(500)], np.ones((1, 3), np.float32))
    c.save_index()
    assert VectorCache(tmp_path, "fp", 3).present([_key(500), _key(1)]).all()  # its chunk read at start
    assert index.stat().st_mtime_ns == before


def test_a_key_index_cut_short_is_rebuilt_from_the_chunks(tmp_path):
    _fill(tmp_path)
    first = VectorCache(tmp_path, "fp", 3)
    first.present([_key(0)])  # saves the key index
    index = first.dir / KEY_INDEX
    data = index.read_bytes()
    index.write_bytes(data[: len(data) // 2])  # a damaged file (zip central directory gone)
    cache = VectorCache(tmp_path, "fp", 3)
    assert cache.present([_key(0), _key(19), _key(20)]).tolist() == [True, True, False]
    assert cache.get_many([_key(7)])[0, 0] == 7.0
