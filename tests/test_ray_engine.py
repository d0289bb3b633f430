"""`--engine ray` on a real multi-node Ray cluster (ray.cluster_utils.Cluster: a head and two
worker nodes, each its own raylet and worker processes, on this machine): the vectors equal
the local engine's, searches agree, IVF shards merge into the single-process index, and the
local engine's guarantees hold (a killed driver resumes, a killed Ray worker costs a retry,
a decoder crash is one failure record, the shrink guard refuses, the publish is atomic)."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray", reason="the Ray engine's tests need `pip install -e '.[ray]'` (make test does it)")

from indexer.build import IndexBuilder  # noqa: E402
from indexer.ray_engine import RayIndexBuilder, add_sharded, connect  # noqa: E402
from shopsearch.catalogue.records import ImageRecord, ProductRecord  # noqa: E402
from shopsearch.catalogue.store import CatalogueStore  # noqa: E402
from shopsearch.embedders.colorhist import ColorHistogramEmbedder  # noqa: E402
from shopsearch.embedding.cache import VectorCache  # noqa: E402
from shopsearch.embedding.journal import CrashJournal  # noqa: E402
from shopsearch.embedding.pipeline import WorkItem  # noqa: E402
from shopsearch.embedding.ray_pipeline import RaySizing, embed_on_ray, size_for  # noqa: E402
from shopsearch.errors import ClusterError, IndexShrinkError  # noqa: E402
from shopsearch.index import IndexStore  # noqa: E402
from shopsearch.index.vector_index import VectorIndex  # noqa: E402
from shopsearch.workers import DIED  # noqa: E402
from tests.conftest import REPO, make_image, sha  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(240)]

#: a small store per node: the machine is shared
STORE = 80 * 2**20
#: decode tasks feeding one actor (what a GPU cluster runs)
SIZING = RaySizing(actors=1, batch_size=16, gpus_per_actor=0.0, cpus_per_actor=0.5, cpus_per_decode_task=0.5,
                   decode_batch=8)
#: an actor per worker node decoding its own images (what a CPU cluster runs)
FUSED = RaySizing(actors=2, batch_size=16, gpus_per_actor=0.0, cpus_per_actor=1.0, cpus_per_decode_task=0.0,
                  decode_batch=8, fused=True)

# the test's own classes and functions travel to the Ray workers by value (the workers
# import shopsearch, not the tests package)
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cluster():
    """A head without CPUs (it only coordinates) and two worker nodes of one CPU each."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": STORE,
                                                      "include_dashboard": False})
    for _ in range(2):
        c.add_node(num_cpus=1, object_store_memory=STORE)
    c.wait_for_nodes()
    connect(c.address)
    yield c
    ray.shutdown()
    c.shutdown()


def _catalogue(tmp: Path, n: int, bad: int = 0, size=(120, 90)) -> tuple[Path, CatalogueStore, list[Path]]:
    """A data dir whose catalogue holds n generated JPEGs (one product each) and `bad` files
    that are not images."""
    data = tmp / "data"
    data.mkdir(parents=True, exist_ok=True)
    cat = CatalogueStore.open(f"sqlite:///{data / 'catalogue.db'}")
    (tmp / "imgs").mkdir(exist_ok=True)
    paths = []
    for i in range(n + bad):
        p = tmp / "imgs" / f"{i:04d}.jpg"
        if i < n:
            make_image(i, size).save(p, "JPEG", quality=90)
        else:
            p.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg " + bytes([i % 256]) * 64)
        paths.append(p)
        cat.upsert_product(ProductRecord(f"S{i}", "x", images=(ImageRecord(str(p), sha256=sha(p)),)))
    return data, cat, paths


def _builders(tmp: Path, data: Path, cat: CatalogueStore, resources) -> tuple[IndexBuilder, RayIndexBuilder]:
    emb = ColorHistogramEmbedder()
    local = IndexBuilder(emb, cat, IndexStore(tmp / "local-index"), tmp / "local-vectors")
    remote = RayIndexBuilder(emb, cat, IndexStore(data / "index"), data / "vectors", resources, batch_size=16)
    return local, remote


def test_sizing_follows_the_cluster():
    # CPUs only: fused decode + embed actors holding a node's CPUs (at most CPU_ACTOR_CPUS each)
    assert size_for({"CPU": 2}) == RaySizing(1, 16, 0.0, 2.0, 0.0, 128, fused=True)
    two_nodes = size_for({"CPU": 2}, node_cpus=[0, 1, 1])  # the test cluster: a head without CPUs
    assert (two_nodes.actors, two_nodes.cpus_per_actor, two_nodes.fused) == (2, 1.0, True)
    big = size_for({"CPU": 40}, node_cpus=[16, 16, 8])
    assert (big.actors, big.cpus_per_actor) == (10, 4.0)
    gpu = size_for({"CPU": 64, "GPU": 8})
    assert (gpu.actors, gpu.gpus_per_actor, gpu.batch_size, gpu.fused) == (8, 1.0, 256, False)
    custom = size_for({"CPU": 64, "GPU": 8}, batch_size=128, actors=2)
    assert (custom.actors, custom.batch_size) == (2, 128)


def test_ray_vectors_and_searches_equal_the_local_engines(cluster, tmp_path):
    data, cat, paths = _catalogue(tmp_path, 60, bad=2)
    resources = ray.cluster_resources()
    local, remote = _builders(tmp_path, data, cat, resources)
    assert remote.nodes == 3  # head + 2 workers all reach the cache folder
    b = remote.build(progress=False, rescan=False)
    assert b.vectors == 60 and b.embedded == 60 and len(b.failed) == 2
    # the two non-images are failure records (`catalogue problems`), not a failed job
    assert {u.path for u in cat.unusable_images()} == {str(p) for p in paths[60:]}
    a = local.build(progress=False, rescan=False)
    assert a.vectors == 60
    keys = [sha(p) for p in paths[:60]]
    diff = np.abs(local.cache.get_many(keys) - VectorCache(data / "vectors", remote.embedder.fingerprint, 384)
                  .get_many(keys)).max()
    print(f"ray vs local vectors: max abs diff {diff:.3g} over {len(keys)} images")
    assert diff <= 1e-5
    # the same hits for the same queries
    emb = ColorHistogramEmbedder()
    q = emb.encode_images([make_image(i, (120, 90)) for i in (3, 17, 42)])
    for store in (local.store, remote.store):
        index, _ = store.load_current()
        if store is local.store:
            want = index.search(q, 5)
        else:
            got = index.search(q, 5)
    assert (got[1] == want[1]).all() and np.allclose(got[0], want[0], atol=1e-5)


def test_ivf_shards_merged_on_ray_give_the_single_process_index(cluster):
    n, dim = 1600, 16
    rng = np.random.default_rng(7)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = np.arange(10, n + 10, dtype=np.int64)
    q = vecs[rng.choice(n, 40, replace=False)] + 0.05 * rng.standard_normal((40, dim)).astype(np.float32)
    for itype in ("ivfpq", "ivfflat"):
        single = VectorIndex(dim, itype, expected_size=n)
        single.add(ids, vecs)  # trains, then adds everything in one process
        sharded = VectorIndex(dim, itype, expected_size=n)
        sharded.train(vecs)
        sharded = add_sharded(sharded, ids, vecs, shard=600)  # 3 Ray tasks, merged in order
        assert len(sharded) == n
        s1, i1 = single.search(q, 10)
        s2, i2 = sharded.search(q, 10)
        assert (i1 == i2).all(), itype
        assert np.allclose(s1, s2, atol=1e-6)


POISON_SIZE = (77, 55)


class CrashOnPoison:
    """A preprocess whose decoder dies (SIGKILL of its own process) on the one image of
    POISON_SIZE, every time, as a decoder crashing on a hostile file would."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(self, image):
        if image.size == POISON_SIZE:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner(image)


@pytest.mark.parametrize("sizing", [SIZING, FUSED], ids=["two-stage", "fused"])
def test_a_decoder_crash_is_one_failure_record_and_quarantined(cluster, tmp_path, sizing):
    """Two-stage, the decode task's worker dies; fused, the embedding actor itself (restarted by Ray)."""
    _, _, paths = _catalogue(tmp_path, 40)
    make_image(21, POISON_SIZE).save(paths[21], "JPEG")
    emb = ColorHistogramEmbedder()
    folder = VectorCache(tmp_path / "vectors", emb.fingerprint, emb.dim).dir
    items = [WorkItem(sha(p), str(p), i) for i, p in enumerate(paths)]
    report = embed_on_ray(items, ColorHistogramEmbedder, CrashOnPoison(emb.preprocess), folder,
                          sizing, progress=False)
    assert [(it.path, why) for it, why in report.failed] == [(str(paths[21]), DIED)]
    assert report.embedded == 39
    cache = VectorCache(tmp_path / "vectors", emb.fingerprint, emb.dim)
    assert len(cache) == 39 and items[21].key not in cache
    assert set(CrashJournal(folder).quarantined()) == {items[21].key}  # later runs skip it


class SlowColorhist(ColorHistogramEmbedder):
    """colorhist that takes 60 ms a batch, so a test can kill the actor in the middle of the job."""

    def encode_batch(self, batch):
        time.sleep(0.06)
        return super().encode_batch(batch)


def _embed_actor_pids() -> list[int]:
    """Processes of the embedding actors (Ray names a worker's process after what it runs)."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            title = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        if title.startswith("ray::") and "MapWorker" in title and "EmbedActor" in title:
            pids.append(int(d.name))
    return pids


def test_a_ray_worker_killed_while_embedding_costs_a_retry_not_a_vector(cluster, tmp_path):
    _, _, paths = _catalogue(tmp_path, 320)
    emb = ColorHistogramEmbedder()
    folder = VectorCache(tmp_path / "vectors", emb.fingerprint, emb.dim).dir
    items = [WorkItem(sha(p), str(p), i) for i, p in enumerate(paths)]
    killed: list[int] = []

    def kill_the_actor_mid_run() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(folder.glob("chunk-*.npz"))) < 3:
            time.sleep(0.01)
        pids = _embed_actor_pids()
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    t = threading.Thread(target=kill_the_actor_mid_run)
    t.start()
    report = embed_on_ray(items, SlowColorhist, emb.preprocess, folder, FUSED, progress=False)
    t.join()
    chunks = len(list(folder.glob("chunk-*.npz")))
    print(f"killed embedding actor pid {killed}; the job embedded {report.embedded} of {len(items)}, "
          f"{len(report.failed)} failed, {chunks} chunks written")
    assert killed, "no embedding actor process was found to kill"
    assert report.embedded == 320 and report.failed == []
    cache = VectorCache(tmp_path / "vectors", emb.fingerprint, emb.dim)
    assert all(it.key in cache for it in items)
    want = emb.encode_images([Image.open(p) for p in paths[:20]])
    assert np.abs(cache.get_many([it.key for it in items[:20]]) - want).max() <= 1e-5


def test_shrink_guard_and_rollback_on_the_ray_engine(cluster, tmp_path):
    data, cat, _ = _catalogue(tmp_path, 30)
    _, remote = _builders(tmp_path, data, cat, ray.cluster_resources())
    first = remote.build(progress=False, rescan=False)
    cat.delete_products([f"S{i}" for i in range(25)])
    with pytest.raises(IndexShrinkError):
        remote.build(progress=False, rescan=False)
    assert remote.store.current_id() == first.build_id  # still serving the first build
    smaller = remote.build(progress=False, rescan=False, max_shrink=1.0)
    assert smaller.vectors == 5 and smaller.embedded == 0  # nothing embedded twice
    assert remote.store.rollback() == first.build_id and remote.store.current_manifest().count == 30


def test_a_forced_update_of_an_ivf_build_re_adds_in_shards_on_ray(cluster, tmp_path):
    """`index update --force` of an IVF build keeps its training and re-adds the cached vectors
    (re-add): on Ray into the trained index the update hands over, in shard tasks."""
    data, cat, _ = _catalogue(tmp_path, 60)
    _, remote = _builders(tmp_path, data, cat, ray.cluster_resources())
    remote.shard_vectors = 16  # 60 vectors: the sharded path
    remote.build(progress=False, rescan=False, index_type="ivfflat")
    cat.delete_products(["S0", "S1"])
    r = remote.update(progress=False, rescan=False, index_type="ivfflat", force=True)
    assert (r.strategy, r.vectors, r.trained_on, r.embedded) == ("re-add", 58, 60, 0)
    index, _ = remote.store.load_current()
    index.nprobe = 64
    picks = (2, 30, 59)
    _, got = index.search(ColorHistogramEmbedder().encode_images([make_image(i, (120, 90)) for i in picks]), 1)
    assert got[:, 0].tolist() == [cat.get_product(f"S{i}").images[0].id for i in picks]


def _cli(data: Path, *args: str) -> list[str]:
    return [sys.executable, "-c", "from indexer.cli import main; main()", "--data-dir", str(data), *args]


def test_a_killed_driver_resumes_with_every_vector_already_written(cluster, tmp_path):
    n = 160
    data, cat, paths = _catalogue(tmp_path, n)
    cmd = _cli(data, "index", "build", "--engine", "ray", "--ray-address", cluster.address, "--model", "colorhist",
               "--batch-size", "8", "--no-rescan", "--json")
    folder = VectorCache(data / "vectors", ColorHistogramEmbedder().fingerprint, 384).dir
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(folder.glob("chunk-*.npz"))) < 2 and proc.poll() is None:
        assert time.monotonic() < deadline, "the Ray build never wrote a chunk"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL, "the build finished before it could be killed"
    saved = len(VectorCache(data / "vectors", ColorHistogramEmbedder().fingerprint, 384))
    assert 8 <= saved < n
    assert IndexStore(data / "index").current_id() is None  # nothing half-published

    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    rep = json.loads(again.stdout)
    print(f"driver killed with {saved} vectors saved; the rerun reused {rep['reused']}, embedded {rep['embedded']}")
    assert rep["engine"] == "ray" and rep["vectors"] == n and rep["failed"] == []
    assert rep["reused"] >= saved and rep["reused"] + rep["embedded"] == n
    assert rep["images_per_s"] > 0


def test_engine_local_imports_nothing_from_ray(tmp_path):
    data, _, _ = _catalogue(tmp_path, 3)
    code = ("import sys; from click.testing import CliRunner; from indexer.cli import cli; "
            f"r = CliRunner().invoke(cli, ['--data-dir', {str(data)!r}, 'index', 'build', '--model', 'colorhist', "
            "'--engine', 'local', '--json']); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body)
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"{}")
    finally:
        conn.close()


def test_two_serving_replicas_switch_to_the_new_build_atomically(cluster, tmp_path):
    """Two production servers (`shopsearch serve --front none`: gunicorn, its gthread workers,
    on loopback, as behind a site's own proxy) read one data dir; an update on the Ray engine
    publishes a new build while both are under load: no request fails, and each replica
    answers from the old build, then from the new one, never back."""
    data, cat, _ = _catalogue(tmp_path, 30)
    _, remote = _builders(tmp_path, data, cat, ray.cluster_resources())
    first = remote.build(progress=False, rescan=False)
    env = {**os.environ, "SHOPSEARCH_DATA_DIR": str(data)}
    env.pop("SHOPSEARCH_DATABASE_URL", None)
    ports = [_free_port(), _free_port()]
    logs = [tmp_path / f"serve-{p}.log" for p in ports]  # files: a full pipe would stall a server
    servers = [subprocess.Popen(_cli(data, "serve", "--front", "none", "--bind", f"127.0.0.1:{p}", "--workers", "1",
                                     "--threads", "4"), cwd=REPO, env=env,
                                stdout=out.open("wb"), stderr=subprocess.STDOUT) for p, out in zip(ports, logs)]
    threads: list[threading.Thread] = []
    log: list[tuple[int, int, str | None, str | None]] = []  # (port, status, build id, top sku)
    stop = threading.Event()
    buf = io.BytesIO()
    make_image(33, (120, 90)).save(buf, "JPEG", quality=90)  # a product the update adds

    def load(port: int) -> None:
        while not stop.is_set():
            status, health = _get(port, "GET", "/api/v1/healthz")
            log.append((port, status, health.get("build_id"), None))
            status, found = _get(port, "POST", "/api/v1/search?k=1", buf.getvalue())
            log.append((port, status, None, (found.get("results") or [{}])[0].get("sku")))
            time.sleep(0.05)  # bounded load: the replicas share two cores with the update

    try:
        deadline = time.monotonic() + 90
        for p, proc in zip(ports, servers):
            while True:
                try:
                    if _get(p, "GET", "/api/v1/healthz")[0] == 200:
                        break
                except OSError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, "a replica did not start"
                time.sleep(0.2)
        threads += [threading.Thread(target=load, args=(p,)) for p in ports]
        for t in threads:
            t.start()
        for i in range(30, 40):
            p = tmp_path / "imgs" / f"{i:04d}.jpg"
            make_image(i, (120, 90)).save(p, "JPEG", quality=90)
            cat.upsert_product(ProductRecord(f"S{i}", "x", images=(ImageRecord(str(p), sha256=sha(p)),)))
        new = remote.update(progress=False, rescan=False).to_dict()  # `index update --engine ray`, in-process
        assert new["vectors"] == 40 and new["embedded"] == 10
        deadline = time.monotonic() + 30
        while not all(any(e[0] == p and e[2] == new["build_id"] for e in log) for p in ports):
            assert time.monotonic() < deadline, "a replica never picked up the new build"
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)  # no request in flight when the servers stop
        for proc in servers:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    outs = [out.read_text(errors="replace") for out in logs]
    assert all("gthread" in out and "Booting worker" in out for out in outs), outs  # gunicorn, not a dev server
    failed = [e for e in log if e[1] != 200]
    print(f"{len(log)} requests to 2 replicas during the update, {len(failed)} failed")
    assert not failed
    for p in ports:
        builds = [e[2] for e in log if e[0] == p and e[2]]
        switch = builds.index(new["build_id"])
        assert set(builds[:switch]) == {first.build_id} and set(builds[switch:]) == {new["build_id"]}
        assert [e[3] for e in log if e[0] == p and e[3]][-1] == "S33"  # the new product is found


def test_s3_image_uris_are_read_through_pyarrow_on_the_workers(cluster, tmp_path):
    """A catalogue whose images live in S3 (moto's S3 server on loopback, spoken to by
    pyarrow's S3 file system in the Ray workers): the vectors equal those of the same bytes
    read from disk, and a missing object is one failure record, not a failed job."""
    moto_server = pytest.importorskip("moto.server", reason="the S3 test needs moto[server] (the test extra)")
    from pyarrow import fs

    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        s3 = fs.S3FileSystem(access_key="k", secret_key="s", endpoint_override=f"127.0.0.1:{port}", scheme="http",
                             region="us-east-1", allow_bucket_creation=True)
        s3.create_dir("shop")
        data = tmp_path / "data"
        data.mkdir()
        cat = CatalogueStore.open(f"sqlite:///{data / 'catalogue.db'}")
        (tmp_path / "imgs").mkdir()
        uris, disk = [], []
        for i in range(13):
            p = tmp_path / "imgs" / f"{i:02d}.jpg"  # the same bytes on disk, for the local engine's vectors
            make_image(i, (120, 90)).save(p, "JPEG", quality=90)
            if i < 12:
                with s3.open_output_stream(f"shop/photos/{i:02d}.jpg") as f:
                    f.write(p.read_bytes())
            # credentials and endpoint in the URI here; a real cluster's nodes take them from their environment
            uri = f"s3://k:s@shop/photos/{i:02d}.jpg?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
            cat.upsert_product(ProductRecord(f"S{i}", "x", images=(ImageRecord(uri, sha256=sha(p)),)))
            uris.append(uri)
            disk.append(p)
        _, remote = _builders(tmp_path, data, cat, ray.cluster_resources())
        b = remote.build(progress=False, rescan=False)
    finally:
        server.stop()
    assert b.vectors == 12 and b.embedded == 12
    assert [path for _, path, _ in b.failed] == [uris[12]]  # the object never uploaded
    print(f"the missing S3 object's failure record: {b.failed[0][2]}")
    assert {u.path for u in cat.unusable_images()} == {uris[12]}
    emb = ColorHistogramEmbedder()
    got = VectorCache(data / "vectors", emb.fingerprint, emb.dim).get_many([sha(p) for p in disk[:12]])
    want = emb.encode_images([Image.open(p) for p in disk[:12]])
    assert np.abs(got - want).max() <= 1e-5


def _can_unshare_mounts() -> bool:
    try:
        return subprocess.run(["unshare", "--mount", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_a_node_that_cannot_see_the_vector_cache_is_refused_up_front(cluster, tmp_path):
    """A third worker node joins from its own mount namespace, where an empty tmpfs hides the
    vector cache folder (a node without the shared mount): the Ray engine refuses to start,
    naming that node, before anything is embedded."""
    if not _can_unshare_mounts():
        pytest.skip("a node with its own view of the file system needs `unshare --mount` (root, or user namespaces)")
    data, cat, _ = _catalogue(tmp_path, 4)
    cache = VectorCache(data / "vectors", ColorHistogramEmbedder().fingerprint, 384).dir
    before = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    ray_cli = Path(sys.executable).with_name("ray")
    node_ip = ray.nodes()[0]["NodeManagerAddress"]
    join = (f"mount -t tmpfs none {cache} && exec {ray_cli} start --address={cluster.address} --block "
            f"--node-ip-address={node_ip} --num-cpus=1 --object-store-memory={STORE} --disable-usage-stats")
    node = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", join],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while not (new := {n["NodeID"] for n in ray.nodes() if n["Alive"]} - before):
            assert node.poll() is None and time.monotonic() < deadline, "the extra node did not join"
            time.sleep(0.5)
        with pytest.raises(ClusterError) as err:
            _builders(tmp_path, data, cat, ray.cluster_resources())
        print(err.value)
        (hidden,) = new
        assert f"node {hidden} (No such file or directory)" in str(err.value)
        assert not any(n in str(err.value) for n in before) and "not shared storage" in str(err.value)
        assert not list(cache.glob("chunk-*")) and not list(cache.glob(".ray-probe-*"))  # nothing embedded or left
    finally:
        os.killpg(node.pid, signal.SIGTERM)  # `ray start --block` stops its node's processes
        node.wait(timeout=60)
        deadline = time.monotonic() + 90
        while any(n["Alive"] for n in ray.nodes() if n["NodeID"] not in before):
            assert time.monotonic() < deadline, "the extra node never left the cluster"
            time.sleep(0.5)
