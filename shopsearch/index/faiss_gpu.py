"""FAISS on a GPU when this build of faiss has one (the faiss-gpu packages); nothing otherwise."""

from __future__ import annotations

import functools
import logging
import subprocess
import sys

import faiss

log = logging.getLogger("shopsearch.index")

#: one tiny search on the GPU, in a child process: a faiss-gpu build without kernels for this
#: GPU's architecture (PyPI's faiss-gpu-cu12 1.9-1.14 carry sm_70/sm_80 code only, so nothing
#: for an H100/H200) copies an index to the GPU fine and then aborts the whole process on the
#: first search, which must not be the server's process
PROBE = ("import faiss, numpy as np; r = faiss.StandardGpuResources(); "
         "i = faiss.index_cpu_to_gpu(r, 0, faiss.IndexFlatIP(8)); x = np.ones((4, 8), 'float32'); "
         "i.add(x); i.search(x, 2)")


def gpu_available() -> bool:
    """True when this FAISS build has GPU support, sees a GPU and can run its kernels there."""
    try:
        if not (hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0):
            return False
    except Exception:  # noqa: BLE001 - a CPU-only build may lack the symbol entirely
        return False
    return kernels_run()


@functools.cache
def kernels_run(code: str = PROBE, timeout_s: float = 120.0) -> bool:
    """Whether `code` (by default one GPU search) exits cleanly in a child Python process;
    once per process. A failure is logged with what the child printed last."""
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("FAISS search stays on the CPU: the GPU probe did not finish (%s)", e)
        return False
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        log.warning("FAISS search stays on the CPU: this faiss-gpu build cannot run on this GPU "
                    "(probe exit %s: %s)", done.returncode, last[:300])
        return False
    return True


def gpu_kmeans(index: faiss.Index) -> None:
    """Point an IVF index's coarse k-means at a GPU flat index (training far faster than on the CPU)."""
    if not gpu_available():
        return
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    if hasattr(inner, "base_index"):
        inner = faiss.downcast_index(inner.base_index)
    if hasattr(inner, "clustering_index") and hasattr(inner, "nlist"):
        try:
            inner.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(inner.d))
        except (RuntimeError, AttributeError) as e:
            log.info("IVF training stays on the CPU: %s", e)
