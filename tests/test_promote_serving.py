"""Promote and roll back under load (issue 17, point 4): two `shopsearch serve` processes on
one data dir answer a bounded search load on loopback while a shadow build of another model
is promoted (colorhist -> efficientnet-lite0) and rolled back. No request may fail, and
every request started after the promote (or the rollback) returned is answered by the new
build: each server checks CURRENT on every request (RELOAD_CHECK_S 0)."""
from __future__ import annotations

import http.client
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from indexer.build import IndexBuilder
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.config import Settings
from shopsearch.embedders import load_embedder
from shopsearch.index import IndexStore
from shopsearch.index.shadow import ShadowTarget
from tests.conftest import jitter, make_image, stop_server
from tests.test_slow_clients import free_port, indexed_data_dir, wait_until_healthy

REPO = Path(__file__).resolve().parents[1]
LOAD_THREADS = 3


def _stage_lite0_shadow(data_dir: Path) -> str:
    """efficientnet-lite0 staged as the shadow build beside the serving colorhist one."""
    settings = Settings(data_dir=data_dir, device="cpu")
    store = IndexStore(settings.index_dir)
    cat = CatalogueStore.open(settings.db_url)
    new = IndexBuilder(load_embedder("efficientnet-lite0", "cpu"), cat, ShadowTarget(store),
                       settings.vector_cache_dir).build(progress=False, workers=1)
    cat.close()
    return new.build_id


class Load:
    """A few threads searching both servers in turn; every answer or failure is kept with
    its start and end time."""

    def __init__(self, ports: list[int], body: bytes) -> None:
        self.ports, self.body = ports, body
        self.stop = threading.Event()
        self.answers: list[tuple[int, float, float, str]] = []  # port, start, end, build id
        self.models: dict[str, set[str]] = {}  # build id -> the models that answered for it
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(LOAD_THREADS)]

    def _run(self, i: int) -> None:
        n = i
        while not self.stop.is_set():
            port = self.ports[n % len(self.ports)]
            n += 1
            t0 = time.monotonic()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                conn.request("POST", "/api/v1/search?k=2", body=self.body,
                             headers={"Content-Type": "application/octet-stream"})
                r = conn.getresponse()
                data = r.read()
                conn.close()
                if r.status != 200:
                    self.failures.append(f"{port}: HTTP {r.status} {data[:200]!r}")
                    continue
                doc = json.loads(data)
                assert doc["results"], doc
                self.answers.append((port, t0, time.monotonic(), doc["build_id"]))
                self.models.setdefault(doc["build_id"], set()).add(doc["model"])
            except Exception as e:  # noqa: BLE001 - every failure is the test's business
                self.failures.append(f"{port}: {e!r}")
            time.sleep(0.05)

    def wait_for(self, build_id: str, after: float, timeout: float = 120) -> None:
        """Until every server has answered with `build_id` to a request started after `after` (each
        loads the other model first: over a minute on a 2-core machine busy with other tests)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            seen = {p for p, t0, _, b in list(self.answers) if b == build_id and t0 > after}
            if seen == set(self.ports):
                return
            assert not self.failures, self.failures
            time.sleep(0.1)
        raise AssertionError(f"not every server switched to {build_id} within {timeout} s")

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=70)


def _switched_cleanly(answers, port: int, new: str, since: float) -> bool:
    """Every request the server was sent after `since` (the switch returned) got `new`, and there was one."""
    mine = [b for p, t0, _, b in answers if p == port and t0 > since]
    return bool(mine) and all(b == new for b in mine)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_promote_and_rollback_under_load_with_two_servers(tmp_path):
    data_dir = indexed_data_dir(tmp_path)  # colorhist serving
    store = IndexStore(data_dir / "index")
    old = store.current_id()
    env = {**os.environ, "SHOPSEARCH_DATA_DIR": str(data_dir), "SHOPSEARCH_DEVICE": "cpu",
           "SHOPSEARCH_TORCH_THREADS": "1"}
    for var in ("SHOPSEARCH_DATABASE_URL", "SHOPSEARCH_MODEL", "SHOPSEARCH_WORKERS", "SHOPSEARCH_THREADS"):
        env.pop(var, None)
    ports = [free_port(), free_port()]
    procs = [subprocess.Popen([sys.executable, "-c", "from indexer.cli import main; main()", "serve", "--front", "none",
                               "--bind", f"127.0.0.1:{port}", "--threads", "4"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for port in ports]
    buf = io.BytesIO()
    jitter(make_image(2), seed=3).save(buf, format="PNG")
    try:
        new = _stage_lite0_shadow(data_dir)  # while the servers start
        assert store.current_id() == old and store.shadow_id() == new
        deadline = time.monotonic() + 60
        for proc, port in zip(procs, ports):
            wait_until_healthy(proc, port, deadline)
        with Load(ports, buf.getvalue()) as load:
            load.wait_for(old, 0)
            assert store.promote() == new
            t_promote = time.monotonic()
            load.wait_for(new, t_promote)
            t_before_rollback = time.monotonic()
            assert store.rollback() == old  # both servers answered with the new model and index
            t_rollback = time.monotonic()
            load.wait_for(old, t_rollback)
            t_back = time.monotonic()
        assert not load.failures, load.failures
        assert load.models == {old: {"colorhist"}, new: {"efficientnet-lite0"}}
        answers = load.answers
        for port in ports:
            # a request still in flight when the rollback began may rightly be answered by
            # either build, so the promote is judged on the answers that came back before it
            assert _switched_cleanly([a for a in answers if a[2] < t_before_rollback], port, new, t_promote)
            assert _switched_cleanly(answers, port, old, t_rollback)
        print(f"{len(answers)} searches, 0 failed; both servers on efficientnet-lite0 {t_rollback - t_promote:.1f} s "
              f"after the promote (loading the model), back on colorhist {t_back - t_rollback:.1f} s after the rollback")
    finally:
        outs = [stop_server(p) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
