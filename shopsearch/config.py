"""Settings: the one reader of the environment.

`Settings.from_env()` is called once at each edge (the CLI group, the web app factory, the
benchmark scripts) and the result is passed down; nothing below this module reads or writes
`os.environ`. The few variables other libraries define (HF_HUB_OFFLINE, OMP_NUM_THREADS,
CXX) are read here too, by the small functions at the end."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

from shopsearch.errors import ConfigError

#: the most products one search returns: the API's cap on `k` and `search -k`'s
MAX_K = 100

COMPILE_MODES = ("auto", "on", "off")
PRECISION_MODES = ("auto", "fp32", "bf16", "int8")
#: SHOPSEARCH_QUERY_PRECISION: the query model's form measured (auto) or forced
QUERY_PRECISIONS = ("auto", "fp32", "bf16")
#: how a served photo search picks its torch threads: fixed (the worker's share of the cores) or
#: adaptive (every core while it is alone on the server: shopsearch/query_threads.py)
QUERY_THREAD_MODES = ("fixed", "adaptive")
FP16_SCAN_MODES = ("auto", "on", "off")
#: served indexes from this many vectors get the float16 copy under fp16_scans=auto (smaller ones
#: hold no filter of the copy's 4,096 images; it costs 2 bytes per dimension and vector: at 100k
#: a department of 20% is scanned on it, docs/filtered_search.md)
FP16_SCANS_MIN = 50_000


def _number(env: Mapping[str, str], name: str, default: float | None, kind: type = int, minimum: float = 0,
            maximum: float | None = None) -> float | None:
    """A numeric setting (default when unset or empty); ConfigError naming the variable when
    it is not a number in range."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name} must be {'an integer' if kind is int else 'a number'}, not {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ConfigError(f"{name} must be {bound}, not {raw!r}")
    return value


def _switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    """An on/off setting (default when unset or empty); ConfigError naming it otherwise."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "on", "true", "yes"):
        return True
    if raw in ("0", "off", "false", "no"):
        return False
    raise ConfigError(f"{name} must be on or off, not {raw!r}")


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    """One of `allowed` (default when unset or empty); ConfigError naming the variable otherwise."""
    raw = (env.get(name) or default).strip().lower()
    if raw not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not {raw!r}")
    return raw


@dataclass(frozen=True)
class GpuTuning:
    """The GPU executor's knobs (SHOPSEARCH_GPU_*, SHOPSEARCH_NVJPEG_SPLIT, SHOPSEARCH_CUDA_GRAPHS)."""

    #: CPU decode processes beside nvJPEG; None: the usable CPUs minus the host's own
    #: (shopsearch.embedding.gpu.HOST_CORES)
    cpu_decoders: int | None = None
    #: share of each batch the CPU decoders take (0..1, pins it: experiments, tests); None: adaptive
    cpu_share: float | None = None
    #: decoded batches waiting for the model (each ~150 MB of float pixels at batch 256)
    prefetch: int = 2
    #: threads reading the nvJPEG share: page-cache reads are short, more threads only
    #: compete with the model thread for the GIL
    read_threads: int = 4
    #: nvJPEG calls a batch is split into
    decode_split: int = 1
    #: replay the model from a CUDA graph when the embedder can capture one
    cuda_graphs: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "GpuTuning":
        d = cls()
        decoders = _number(env, "SHOPSEARCH_GPU_CPU_DECODERS", None)
        return cls(
            cpu_decoders=None if decoders is None else int(decoders),
            cpu_share=_number(env, "SHOPSEARCH_GPU_CPU_SHARE", None, float, 0, 1),
            prefetch=int(_number(env, "SHOPSEARCH_GPU_PREFETCH", d.prefetch, minimum=1)),  # type: ignore[arg-type]
            read_threads=int(_number(env, "SHOPSEARCH_GPU_READ_THREADS", d.read_threads, minimum=1)),  # type: ignore[arg-type]
            decode_split=int(_number(env, "SHOPSEARCH_NVJPEG_SPLIT", d.decode_split, minimum=1)),  # type: ignore[arg-type]
            cuda_graphs=env.get("SHOPSEARCH_CUDA_GRAPHS", "1").strip() != "0")


@dataclass(frozen=True)
class PipelineSettings:
    """How embedding jobs run when a command does not say (SHOPSEARCH_COMPILE)."""

    #: torch.compile the model first: auto (big CPU jobs) | on | off
    compile: str = "auto"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "PipelineSettings":
        return cls(compile=_choice(env, "SHOPSEARCH_COMPILE", "auto", COMPILE_MODES))


@dataclass(frozen=True)
class DownloadSettings:
    """How a catalogue import fetches image URLs (shopsearch.catalogue.downloads; Settings.downloads)."""

    #: seconds a download may take in all (name resolution, connect, headers, every redirect, every byte)
    timeout_s: float = 30.0
    #: the largest image file accepted (bytes, after any gzip decoding)
    max_bytes: int = 50 << 20
    #: downloads at once
    concurrency: int = 8
    user_agent: str = "ShopSearch catalogue import"
    #: the most bytes one import may download in all (SHOPSEARCH_DOWNLOAD_MAX_TOTAL_BYTES): past
    #: it, the URLs left are reported as not downloaded (a re-import fetches them, not the others)
    max_total_bytes: int = 4 << 30

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "DownloadSettings":
        cap = _number(env, "SHOPSEARCH_DOWNLOAD_MAX_TOTAL_BYTES", cls().max_total_bytes, minimum=1)
        return cls(max_total_bytes=int(cap))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Settings:
    """Where ShopSearch keeps its state, which model/device it uses and how jobs are tuned."""

    data_dir: Path = field(default_factory=lambda: Path("var").resolve())
    database_url: str | None = None
    model: str = "auto"
    device: str = "auto"
    #: the precision `index build` runs a model in when its spec names none: "auto" (the faster of
    #: fp32 and bf16, timed once per machine, where the CPU has bf16; else fp32) | fp32 | bf16 | int8
    precision: str = "auto"
    #: per-user files that outlive any one data dir (the precision "auto" chose on this machine)
    cache_dir: Path = field(default_factory=lambda: Path("~/.cache/shopsearch").expanduser())
    image_root: Path | None = None
    #: FAISS search on the GPU: "auto" (when faiss-gpu sees one and device is not cpu), "on", "off"
    faiss_gpu: str = "auto"
    #: torch threads per web worker (0: the cores split between the workers)
    torch_threads: int = 0
    #: fixed | adaptive (QUERY_THREAD_MODES)
    query_threads: str = "fixed"
    #: a float16 copy of a served index's vectors for exact filtered scans at half the memory
    #: traffic (shopsearch/index/half_copy.py; +2 bytes per dimension and vector): auto (indexes
    #: of FP16_SCANS_MIN vectors or more) | on | off
    fp16_scans: str = "auto"
    #: threads one large filtered scan of that copy may use (0: 2 where the process has two
    #: cores or more; a search that finds the second one busy scans alone)
    scan_threads: int = 0
    #: the form of the model shoppers' photos run on (CPU): auto (the fastest measured at start-up
    #: whose vectors match fp32's, bf16 where the CPU has it) | fp32 | bf16
    query_precision: str = "auto"
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    gpu: GpuTuning = field(default_factory=GpuTuning)
    #: how `catalogue import` downloads image URLs (limits per download and per import)
    downloads: DownloadSettings = field(default_factory=DownloadSettings)
    #: search quality defaults of the service (a query may ask otherwise): re-ranking
    #: (off | qe | kr | qe+kr), mirrored-photo test-time augmentation, category fusion.
    #: Fusion is on: once `classify train` has made a head for the model it is the largest
    #: measured gain and costs one matrix product per query (benchmarks/RESULTS.md, issue 13)
    rerank: str = "off"
    tta: bool = False
    fusion: bool = True
    #: where index builds embed: "local" (this machine) or "ray" (a Ray cluster, indexer/ray_engine.py)
    engine: str = "local"
    #: the Ray cluster to join ("auto", "ray://host:10001", "host:6379"); None starts a local Ray
    ray_address: str | None = None
    #: the feedback log (shopsearch.feedback): every search and the shoppers' clicks and verdicts
    feedback_log: bool = True
    #: days a logged search (and its feedback) is kept; `shopsearch feedback prune` enforces it
    feedback_retention_days: int = 90

    @property
    def db_url(self) -> str:
        """Database URL; SQLite under the data dir unless one is configured."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'catalogue.db'}"

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    @property
    def vector_cache_dir(self) -> Path:
        return self.data_dir / "vectors"

    @property
    def classifier_dir(self) -> Path:
        return self.data_dir / "classifiers"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def downloads_dir(self) -> Path:
        """Catalogue images a manifest names by URL, once downloaded (shopsearch.catalogue.downloads)."""
        return self.data_dir / "downloads"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> "Settings":
        """Defaults, then SHOPSEARCH_* variables of `env` (default: this process's), then
        explicit non-None overrides. A malformed tuning variable is a ConfigError naming it."""
        env = os.environ if env is None else env
        s = cls(
            data_dir=Path(env.get("SHOPSEARCH_DATA_DIR", "var")).resolve(),
            database_url=env.get("SHOPSEARCH_DATABASE_URL") or None,
            model=env.get("SHOPSEARCH_MODEL", "auto"),
            device=env.get("SHOPSEARCH_DEVICE", "auto"),
            precision=_choice(env, "SHOPSEARCH_PRECISION", "auto", PRECISION_MODES),
            cache_dir=Path(env.get("SHOPSEARCH_CACHE_DIR") or Path(env.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
                           / "shopsearch"),
            faiss_gpu=env.get("SHOPSEARCH_FAISS_GPU", "auto"),
            torch_threads=int(_number(env, "SHOPSEARCH_TORCH_THREADS", 0) or 0),
            query_precision=_choice(env, "SHOPSEARCH_QUERY_PRECISION", "auto", QUERY_PRECISIONS),
            query_threads=_choice(env, "SHOPSEARCH_QUERY_THREADS", "fixed", QUERY_THREAD_MODES),
            fp16_scans=_choice(env, "SHOPSEARCH_FP16_SCANS", "auto", FP16_SCAN_MODES),
            scan_threads=int(_number(env, "SHOPSEARCH_SCAN_THREADS", 0) or 0),
            pipeline=PipelineSettings.from_env(env),
            gpu=GpuTuning.from_env(env),
            downloads=DownloadSettings.from_env(env),
            rerank=env.get("SHOPSEARCH_RERANK", "off"),
            tta=_switch(env, "SHOPSEARCH_TTA", False),
            fusion=_switch(env, "SHOPSEARCH_FUSION", True),
            engine=env.get("SHOPSEARCH_ENGINE", "local") or "local",
            ray_address=env.get("SHOPSEARCH_RAY_ADDRESS") or None,
            feedback_log=_switch(env, "SHOPSEARCH_FEEDBACK_LOG", True),
            feedback_retention_days=int(_number(env, "SHOPSEARCH_FEEDBACK_RETENTION_DAYS", 90, minimum=1)),  # type: ignore[arg-type]
        )
        clean = {k: v for k, v in overrides.items() if v is not None}
        if "data_dir" in clean:
            clean["data_dir"] = Path(str(clean["data_dir"])).resolve()
        return replace(s, **clean)  # type: ignore[arg-type]


# -- variables other libraries define ------------------------------------------------------
def hf_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) forbids downloads."""
    return any(os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def available_cpus() -> int:
    """CPUs this process may really use: affinity mask, capped by a cgroup v2 quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def threads_pinned() -> bool:
    """True when OMP_NUM_THREADS/MKL_NUM_THREADS set torch's thread count."""
    return bool(os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS"))


def cxx_compilers() -> tuple[str, ...]:
    """C++ compilers inductor may use, $CXX first."""
    return tuple(c for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c)


# -- the process environment, for the edges (CLI, server) that must set it for others ---------
#: where prometheus_client's multi-process mode keeps every gunicorn worker's samples
METRICS_DIR_VAR = "PROMETHEUS_MULTIPROC_DIR"


def quiet_tokenizers() -> None:
    """Tokenizers' own thread pool fights the embedding workers for the cores: off unless asked."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def metrics_dir() -> str | None:
    """The multi-process metrics directory this process was started with, if any."""
    return os.environ.get(METRICS_DIR_VAR) or None


def set_metrics_dir(path: str | None) -> None:
    """Set (or, with None, clear) the metrics directory before prometheus_client is imported."""
    if path is None:
        os.environ.pop(METRICS_DIR_VAR, None)
    else:
        os.environ[METRICS_DIR_VAR] = path


def child_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment plus `extra`, for a program it replaces itself with."""
    return {**os.environ, **extra}


#: a serving process's thread settings for numpy's OpenBLAS and the OpenMP runtimes (torch's,
#: faiss's), read by each library once, when it loads. A search's numpy and faiss work is one
#: vector: a second BLAS thread only spins after each product, and OpenMP threads that spin at
#: every barrier multiply a single-image forward's CPU time while other jobs hold the cores
#: (benchmarks/RESULTS.md: load_search_ab_query7_epyc_avx2_loaded, serve_profile_*, query_batch_probe_omp_*)
SERVING_THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


#: every command's OpenMP wait policy: bulk embedding runs decode threads beside torch's OpenMP
#: threads on few cores, and OpenMP threads spinning at each barrier burn CPU the decoders and
#: other jobs could use (less CPU per image, the same images/s idle: benchmarks/RESULTS.md,
#: omp_wait_ab_lite0_xeon_amx_idle)
BULK_THREAD_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def pin_serving_threads() -> dict[str, str]:
    """Set SERVING_THREAD_ENV where the operator has not set those variables; returns what was
    set. Only effective before numpy, faiss and torch are imported (the serve command calls it
    first): gunicorn's workers inherit the libraries the master loaded, settings included."""
    return pin_thread_env(SERVING_THREAD_ENV)


def pin_thread_env(env: Mapping[str, str]) -> dict[str, str]:
    """Set the variables of `env` the operator has not set; returns what was set (effective only
    before the libraries that read them load: the CLI's entry point calls it with BULK_THREAD_ENV)."""
    done = {k: v for k, v in env.items() if k not in os.environ}
    os.environ.update(done)
    return done


def pin_omp_threads(n: int, override: bool) -> None:
    """OMP_NUM_THREADS=n for a process that imports torch later (a gunicorn worker after fork),
    unless the operator set it already and `override` is false."""
    if override or "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(n)
