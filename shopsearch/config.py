"""Settings as a dataclass, read from SHOPSEARCH_* environment variables."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path


def env_number(name: str, default: float | None, kind: type = int, minimum: float = 0,
               maximum: float | None = None) -> float | None:
    """A numeric tuning setting from the environment (default when unset or empty);
    ConfigError naming the variable when it is not a number in range."""
    from shopsearch.errors import ConfigError

    raw = os.environ.get(name, "").strip()
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


def default_data_dir() -> Path:
    return Path(os.environ.get("SHOPSEARCH_DATA_DIR", "var")).resolve()


@dataclass(frozen=True)
class Settings:
    """Where ShopSearch keeps its state and which model/device it uses."""

    data_dir: Path = field(default_factory=default_data_dir)
    database_url: str | None = None
    model: str = "auto"
    device: str = "auto"
    image_root: Path | None = None
    #: FAISS search on the GPU: "auto" (when faiss-gpu sees one and device is not cpu), "on", "off"
    faiss_gpu: str = "auto"
    #: where index builds embed: "local" (this machine) or "ray" (a Ray cluster, indexer/ray_engine.py)
    engine: str = "local"
    #: the Ray cluster to join ("auto", "ray://host:10001", "host:6379"); None starts a local Ray
    ray_address: str | None = None

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

    @classmethod
    def from_env(cls, **overrides: object) -> "Settings":
        """Defaults, then SHOPSEARCH_* variables, then explicit non-None overrides."""
        env = os.environ
        s = cls(
            data_dir=Path(env.get("SHOPSEARCH_DATA_DIR", "var")).resolve(),
            database_url=env.get("SHOPSEARCH_DATABASE_URL") or None,
            model=env.get("SHOPSEARCH_MODEL", "auto"),
            device=env.get("SHOPSEARCH_DEVICE", "auto"),
            faiss_gpu=env.get("SHOPSEARCH_FAISS_GPU", "auto"),
            engine=env.get("SHOPSEARCH_ENGINE", "local") or "local",
            ray_address=env.get("SHOPSEARCH_RAY_ADDRESS") or None,
        )
        clean = {k: v for k, v in overrides.items() if v is not None}
        if "data_dir" in clean:
            clean["data_dir"] = Path(str(clean["data_dir"])).resolve()
        return replace(s, **clean)  # type: ignore[arg-type]
