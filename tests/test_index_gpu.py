"""FAISS search on the GPU: a search-only copy (a CPU copy stands in for faiss-gpu here),
the CPU index kept for everything else, and the SHOPSEARCH_FAISS_GPU switch."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from shopsearch.app import place_index
from shopsearch.config import Settings
from shopsearch.errors import ConfigError
from shopsearch.index import VectorIndex
from shopsearch.index.faiss_gpu import gpu_available, kernels_run


def _data(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _copies(calls: list):
    def cloner(index):
        calls.append(index)
        return faiss.clone_index(index)
    return cloner


def test_search_copy_answers_search_and_the_cpu_index_the_rest():
    x, q = _data(3000), _data(40, seed=1)
    ids = np.arange(10_000, 13_000, dtype=np.int64)
    cpu = VectorIndex(32, "ivfflat", expected_size=3000)
    cpu.add(ids, x)
    gpu = VectorIndex(32, "ivfflat", index=faiss.clone_index(cpu.faiss_index))
    calls: list = []
    assert gpu.to_gpu(cloner=_copies(calls)) and gpu.on_gpu and len(calls) == 1
    found = {}
    for nprobe in (1, 4096):  # tuning reaches the copy: same answers as the CPU index at each setting
        cpu.nprobe = gpu.nprobe = nprobe
        s_cpu, i_cpu = cpu.search(q, 10)
        s_gpu, i_gpu = gpu.search(q, 10)
        np.testing.assert_array_equal(i_gpu, i_cpu)
        np.testing.assert_allclose(s_gpu, s_cpu, atol=1e-6)
        found[nprobe] = i_gpu
    exact = ids[np.argsort(-(q @ x.T), axis=1)[:, :10]]
    np.testing.assert_array_equal(found[4096], exact)  # every list probed: exact
    assert (found[1] != exact).any()  # one list probed: not exact, so nprobe did change the copy
    np.testing.assert_allclose(gpu.reconstruct(10_005), x[5], atol=1e-6)
    assert set(gpu.ids()) == set(ids)


def test_changes_drop_the_stale_copy():
    x = _data(100)
    vi = VectorIndex(32, "flat")
    vi.add(np.arange(100), x)
    assert vi.to_gpu(cloner=faiss.clone_index)
    vi.remove(np.array([7]))
    assert not vi.on_gpu  # the copy would still return 7
    assert 7 not in vi.search(x[7:8], 5)[1][0]
    assert vi.to_gpu(cloner=faiss.clone_index)
    vi.add(np.array([500]), _data(1, seed=9))
    assert not vi.on_gpu and vi.search(_data(1, seed=9), 1)[1][0, 0] == 500


def test_a_type_the_gpu_cannot_take_stays_on_the_cpu():
    vi = VectorIndex(32, "flat")
    vi.add(np.arange(10), _data(10))

    def refuses(index):
        raise RuntimeError("clone not supported for this type of IndexRefine")

    assert vi.to_gpu(cloner=refuses) is False and not vi.on_gpu
    assert vi.search(_data(10)[:1], 1)[1][0, 0] == 0


@pytest.mark.skipif(gpu_available(), reason="checks the CPU-only FAISS build")
def test_settings_switch_on_a_cpu_only_faiss(tmp_path):
    vi = VectorIndex(32, "flat")
    vi.add(np.arange(10), _data(10))
    for mode in ("auto", "off", "AUTO"):
        assert place_index(vi, Settings(data_dir=tmp_path, faiss_gpu=mode)) is False
    assert vi.to_gpu() is False
    with pytest.raises(ConfigError, match="no GPU support.*faiss-gpu"):
        place_index(vi, Settings(data_dir=tmp_path, faiss_gpu="on"))
    with pytest.raises(ConfigError, match="auto, on or off"):
        place_index(vi, Settings(data_dir=tmp_path, faiss_gpu="yes"))
    assert not vi.on_gpu


def test_env_reaches_settings(monkeypatch):
    monkeypatch.setenv("SHOPSEARCH_FAISS_GPU", "off")
    assert Settings.from_env().faiss_gpu == "off"


@pytest.mark.skipif(not gpu_available(), reason="needs faiss-gpu and a GPU")
def test_real_gpu_search_matches_cpu():
    x, q = _data(5000, 64), _data(50, 64, seed=2)
    cpu = VectorIndex(64, "flat")
    cpu.add(np.arange(5000), x)
    gpu = VectorIndex(64, "flat", index=faiss.clone_index(cpu.faiss_index))
    assert gpu.to_gpu()
    np.testing.assert_array_equal(gpu.search(q, 10)[1], cpu.search(q, 10)[1])


def test_gpu_probe_runs_in_a_child_so_an_aborting_build_only_says_no(caplog):
    """A faiss-gpu build without kernels for the GPU aborts on the first search (seen with
    PyPI's faiss-gpu-cu12 1.14 on an H200): the probe's child dies, the caller lives and hears why."""
    probe = kernels_run.__wrapped__  # uncached: each case runs its own child
    with caplog.at_level("WARNING", logger="shopsearch.index"):
        assert probe("import os, sys; sys.stderr.write('no kernel image is available\\n'); os.abort()") is False
    assert "cannot run on this GPU" in caplog.text and "no kernel image is available" in caplog.text
    assert probe("import time; time.sleep(5)", timeout_s=0.5) is False
    assert probe("x = 1") is True
