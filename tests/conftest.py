"""Shared fixtures: generated images, a deterministic embedder, both databases."""
from __future__ import annotations

import hashlib
import http.client
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never touch the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# index builds in tests compare their vectors with fp32 embedders': the product default "auto" would
# time bf16 against fp32 on CPUs that have bf16 (tests/test_precision_choice.py covers that choice)
os.environ.setdefault("SHOPSEARCH_PRECISION", "fp32")

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import text

from shopsearch.catalogue import db as dbmod
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.embedders.base import l2_normalize

REPO = Path(__file__).resolve().parents[1]
GROCERY = Path(os.environ.get("SHOPSEARCH_GROCERY_DIR", REPO.parent / "shared" / "datasets" / "grocerystore"))
PG_URL = os.environ.get("SHOPSEARCH_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")

needs_grocery = pytest.mark.skipif(not (GROCERY / "dataset" / "classes.csv").is_file(),
                                   reason=f"Grocery Store dataset not found at {GROCERY}")


class FakeEmbedder:
    """Deterministic test embedder: mean colour of a 4x4 grid, so images of the same colour
    pattern land together. Implements the Embedder protocol without torch."""

    name = "fake"
    has_text = False
    device = "cpu"

    def __init__(self, salt: str = "") -> None:
        self._salt = salt
        self.calls = 0

    @property
    def dim(self) -> int:
        return 48

    @property
    def fingerprint(self) -> str:
        return "fake-grid4x4" + (f"-{self._salt}" if self._salt else "")

    def preprocess(self, image: Image.Image) -> np.ndarray:
        small = np.asarray(image.convert("RGB").resize((4, 4), Image.BILINEAR), dtype=np.float32) / 255.0
        return small.transpose(2, 0, 1).copy()

    def encode_batch(self, batch: np.ndarray) -> np.ndarray:
        self.calls += len(batch)
        flat = batch.reshape(len(batch), -1) - 0.5
        return l2_normalize(flat)

    def encode_images(self, images, batch_size: int = 32) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.encode_batch(np.stack([self.preprocess(i) for i in images]))

    def encode_texts(self, texts):
        from shopsearch.errors import CapabilityError

        raise CapabilityError("fake embedder has no text tower")


def make_image(seed: int, size: tuple[int, int] = (96, 96)) -> Image.Image:
    """A random 4x4 colour grid upscaled: distinct per seed, stable across runs."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize(size, Image.NEAREST)


def jitter(img: Image.Image, seed: int, amount: int = 12) -> Image.Image:
    """The same picture, slightly different pixels: a 'shopper photo' of a catalogue image."""
    rng = np.random.default_rng(seed)
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-amount, amount + 1, size=np.asarray(img).shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny torch workloads (heads fitted on a few hundred vectors) on one intra-op thread: with
    more, every small op waits for threads that a loaded shared CPU deschedules, and the fits
    take many times longer for nothing (benchmarks/results/test_suite_durations_loaded.json)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fake_embedder() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture
def image_dir(tmp_path: Path):
    """Factory: writes `n` generated JPEGs and returns their paths."""

    def _make(n: int, start: int = 0, sub: str = "imgs") -> list[Path]:
        d = tmp_path / sub
        d.mkdir(parents=True, exist_ok=True)
        paths = []
        for i in range(start, start + n):
            p = d / f"img_{i:04d}.png"
            make_image(i).save(p)
            paths.append(p)
        return paths

    return _make


def _pg_available() -> bool:
    try:
        eng = dbmod.make_engine(PG_URL)
        with eng.connect() as c:
            c.execute(text("SELECT 1"))
        eng.dispose()
        return True
    except Exception:  # noqa: BLE001
        return False


_pg_schemas: list[str] = []


def _fresh_pg_url() -> str:
    """A URL whose search_path is a brand-new schema, so concurrent test runs never collide."""
    name = f"t_{os.getpid()}_{len(_pg_schemas)}"
    eng = dbmod.make_engine(PG_URL)
    with eng.begin() as c:
        c.execute(text(f"DROP SCHEMA IF EXISTS {name} CASCADE"))
        c.execute(text(f"CREATE SCHEMA {name}"))
    eng.dispose()
    _pg_schemas.append(name)
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{name}"


@pytest.fixture(scope="session", autouse=True)
def _drop_pg_schemas():
    yield
    if not _pg_schemas:
        return
    eng = dbmod.make_engine(PG_URL)
    with eng.begin() as c:
        for name in _pg_schemas:
            c.execute(text(f"DROP SCHEMA IF EXISTS {name} CASCADE"))
    eng.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path) -> str:
    """Each catalogue test runs on SQLite and on PostgreSQL (a fresh schema each time)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalogue.db'}"
    if not _pg_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_URL}; CI must test both databases")
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")
    return _fresh_pg_url()


@pytest.fixture
def catalogue(db_url: str):
    store = CatalogueStore.open(db_url)
    yield store
    store.close()


@pytest.fixture
def sqlite_catalogue(tmp_path: Path):
    store = CatalogueStore.open(f"sqlite:///{tmp_path / 'catalogue.db'}")
    yield store
    store.close()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class ImageHandler(BaseHTTPRequestHandler):
    """A quiet request handler for loopback image servers, with send_image (200, image/jpeg)."""

    def log_message(self, *args) -> None:
        pass

    def send_image(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the client gave up (size cap, timeout)
            pass


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) answering with `handler`, until close()."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def raw_http(port: int, request: bytes) -> tuple[int, dict[str, list[str]], bytes]:
    """Send bytes as they are to 127.0.0.1:port (http.client refuses to write malformed or
    oversized requests); (status, headers by lowercase name, body)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        headers.setdefault(name.lower(), []).append(value)
    return int(lines[0].split()[1]), headers, body


def stop_server(proc) -> str:
    """SIGTERM a `shopsearch serve` subprocess (stdout piped) and return what it printed; one
    that does not stop within 30 s is killed, and its exit code then fails the caller's check."""
    import signal
    import subprocess

    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=30)[0].decode()
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0].decode()


@pytest.fixture(scope="module")
def tiny_labelled_items(tmp_path_factory):
    """Twelve 40 px images in three classes of two levels (Fruit/Apple, Fruit/Pear, Dairy/Milk), as
    LabelledImages: enough for one tiny fine-tuning epoch."""
    from shopsearch.classify.data import imagefolder

    root = tmp_path_factory.mktemp("tiny-labelled")
    for c, cat in enumerate(["Fruit/Apple", "Fruit/Pear", "Dairy/Milk"]):
        (root / cat).mkdir(parents=True)
        for j in range(4):
            jitter(make_image(c, size=(40, 40)), seed=10 * c + j).save(root / cat / f"{j}.png")
    return imagefolder(root)


def fetch(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
          source: str = "127.0.0.1") -> tuple[int, http.client.HTTPMessage, bytes]:
    """One HTTP request to a loopback server (from `source`): status, headers, body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15, source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.headers, r.read()
    finally:
        conn.close()
