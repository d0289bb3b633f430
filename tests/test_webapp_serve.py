"""`shopsearch serve` for real: gunicorn on a loopback port, two workers, preloaded."""
from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from indexer.build import IndexBuilder
from indexer.cli import cli
from shopsearch.catalogue.records import ImageRecord, ProductRecord
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.config import Settings
from shopsearch.embedders import load_embedder
from shopsearch.index import IndexStore
from tests.conftest import jitter, make_image, sha, stop_server
from webapp.server import SPARE_THREADS, bind_address, gunicorn_options

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 30,
            headers: dict[str, str] | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body,
                     headers={**({"Content-Type": "application/octet-stream"} if body else {}), **(headers or {})})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_gunicorn_options():
    opts = gunicorn_options(bind_address("::1", 8080), workers=3, threads=2, preload=False)
    # 2 search slots (webapp/search_gate.py) and the spare threads for everything else
    assert opts["bind"] == "[::1]:8080" and opts["workers"] == 3 and opts["threads"] == 2 + SPARE_THREADS
    assert opts["worker_class"] == "gthread" and opts["preload_app"] is False
    assert gunicorn_options("127.0.0.1:1")["preload_app"] is False  # torch models load after fork
    with pytest.raises(ValueError):
        gunicorn_options("127.0.0.1:1", workers=0)
    result = CliRunner().invoke(cli, ["serve", "--bind", "nonsense"])
    assert result.exit_code != 0 and "HOST:PORT" in result.output


def test_serve_under_gunicorn(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    cat = CatalogueStore.open(settings.db_url)
    for i in range(6):
        p = tmp_path / f"p{i}.png"
        make_image(i).save(p)
        cat.upsert_product(ProductRecord(sku=f"S{i}", title=f"Thing {i}", category_path=("Things",),
                                         images=(ImageRecord(str(p), sha256=sha(p)),)))
    emb = load_embedder("colorhist", "cpu")  # model-free: the real registry path, no weights needed
    IndexBuilder(emb, cat, IndexStore(settings.index_dir), settings.vector_cache_dir).build(progress=False, workers=1)
    cat.close()
    port = free_port()
    home = tmp_path / "home"  # gunicorn's per-user control socket would be under it
    env = {**os.environ, "SHOPSEARCH_DATA_DIR": str(settings.data_dir), "HOME": str(home)}
    env.pop("SHOPSEARCH_DATABASE_URL", None)
    env.pop("XDG_RUNTIME_DIR", None)
    proc = subprocess.Popen([sys.executable, "-c", "from indexer.cli import main; main()", "serve", "--bind", f"127.0.0.1:{port}",
                             "--workers", "2", "--threads", "2", "--preload", "--cors-origins", "https://shop.example"],
                            cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, body = request(port, "GET", "/api/v1/healthz", timeout=5)
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.3)
        health = json.loads(body)
        assert status == 200 and health["model"] == "colorhist" and health["vectors"] == 6
        import io

        buf = io.BytesIO()
        jitter(make_image(4), seed=9).save(buf, "JPEG")
        for _ in range(4):  # several requests: both workers answer correctly
            status, body = request(port, "POST", "/api/v1/search?k=3", buf.getvalue())
            assert status == 200 and json.loads(body)["results"][0]["sku"] == "S4"
        status, body = request(port, "POST", "/api/v1/search", b"not an image")
        assert status == 415 and json.loads(body)["error"]["code"] == "unsupported_media_type"
        status, body = request(port, "GET", "/")
        assert status == 200 and b'id="dropzone"' in body
        # 400 emoji (under the 500-character limit) make a 4,835-byte request line: the app's
        # JSON answer (no text tower here), not gunicorn's HTML 414 past its default 4094
        status, body = request(port, "GET", "/api/v1/search/text?q=" + "%F0%9F%8D%8E" * 400)
        assert status == 409 and json.loads(body)["error"]["code"] == "capability_missing"
        # 120 small headers (inside nginx's buffers): answered by the app, not gunicorn's HTML 431
        status, body = request(port, "GET", "/api/v1/categories", headers={f"X-H{i}": "v" for i in range(120)})
        assert status == 200 and "categories" in json.loads(body)
        # a storefront on another origin: its browser's preflight and read pass nginx and gunicorn
        status, body = request(port, "OPTIONS", "/api/v1/search", headers={
            "Origin": "https://shop.example", "Access-Control-Request-Method": "POST"})
        assert status == 204 and body == b""
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/v1/categories", headers={"Origin": "https://shop.example"})
        answer = conn.getresponse()
        assert answer.status == 200 and answer.getheader("Access-Control-Allow-Origin") == "https://shop.example"
        conn.close()
        # no control socket at gunicorn's one path per user, which every `serve` on the machine shared
        assert not (home / ".gunicorn").exists()
    finally:
        out = stop_server(proc)
    assert proc.returncode == 0, out
    assert "gthread" in out and "Booting worker" in out


def test_serve_refuses_a_malformed_cors_origin_in_one_line(tmp_path):
    r = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "d"), "serve", "--cors-origins", "shop.example"],
                           env={"SHOPSEARCH_DATABASE_URL": ""})
    assert r.exit_code == 2 and "not an origin" in r.output and "Traceback" not in r.output, r.output


def test_torch_threads_per_worker_is_a_setting():
    """SHOPSEARCH_TORCH_THREADS is read with the other settings (a bad value names itself)."""
    from shopsearch.config import Settings
    from shopsearch.errors import ConfigError

    assert Settings.from_env({"SHOPSEARCH_TORCH_THREADS": "3"}).torch_threads == 3
    assert Settings.from_env({}).torch_threads == 0
    with pytest.raises(ConfigError, match="SHOPSEARCH_TORCH_THREADS"):
        Settings.from_env({"SHOPSEARCH_TORCH_THREADS": "many"})


def test_a_worker_forked_before_torch_gets_its_share_of_the_cores(monkeypatch):
    """Workers load the model after fork, so torch is not imported yet in post_fork: the split
    goes through OMP_NUM_THREADS (read when torch loads), never over an operator's own value."""
    import os
    import sys

    from webapp import server

    monkeypatch.delitem(sys.modules, "torch", raising=False)  # as in a freshly forked worker
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    server._torch_threads(workers=2)
    assert os.environ["OMP_NUM_THREADS"] == "2"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    server._torch_threads(workers=4)
    assert os.environ["OMP_NUM_THREADS"] == "3"  # the operator's value stands ...
    server._torch_threads(workers=4, configured=1)
    assert os.environ["OMP_NUM_THREADS"] == "1"  # ... unless SHOPSEARCH_TORCH_THREADS says otherwise


PINNING_PROBE = """
import ctypes, glob, os, sys
import shopsearch.config as cfg
pin = cfg.pin_serving_threads
def spy():
    print("loaded before pinning:", [m for m in ("numpy", "faiss", "torch") if m in sys.modules])
    return pin()
cfg.pin_serving_threads = spy
from indexer.cli import main
sys.argv = ["shopsearch", "--data-dir", sys.argv[1], "serve", "--print-nginx-config"]
try:
    main()
except SystemExit:
    pass
print("env:", os.environ.get("OPENBLAS_NUM_THREADS"), os.environ.get("OMP_WAIT_POLICY"))
import numpy
libs = glob.glob(os.path.join(os.path.dirname(numpy.__file__) + ".libs", "libscipy_openblas*"))
get = getattr(ctypes.CDLL(libs[0]), "scipy_openblas_get_num_threads64_", None) if libs else None
print("numpy blas threads:", get() if get else "unknown")
"""


@pytest.mark.parametrize("operator", [{}, {"OPENBLAS_NUM_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE"}])
def test_serve_pins_numpy_and_openmp_threads_before_they_load(tmp_path, operator):
    """`serve` sets one BLAS thread and passive OpenMP waits before numpy, faiss or torch is
    imported (each reads them once, at load, and gunicorn's workers inherit what the master
    loaded), so numpy's products really run on one thread; an operator's own values stand."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.pop("SHOPSEARCH_DATABASE_URL", None)
    out = subprocess.run([sys.executable, "-c", PINNING_PROBE, str(tmp_path / "data")], cwd=REPO,
                         env={**env, **operator}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "loaded before pinning: []" in out.stdout
    blas, wait = (operator.get("OPENBLAS_NUM_THREADS", "1"), operator.get("OMP_WAIT_POLICY", "PASSIVE"))
    assert f"env: {blas} {wait}" in out.stdout
    threads = out.stdout.split("numpy blas threads:")[1].strip()
    if threads != "unknown":  # numpy built on another BLAS: the environment is what can be checked
        assert threads == blas
