"""Benchmark configurations: "model=efficientnet-lite0,index=hnsw,routing=off" or a TOML file.

TOML form (one table per configuration):

    [[config]]
    name = "lite0-flat"          # optional; a label is derived otherwise
    model = "efficientnet-lite0"
    index = "flat"               # flat | hnsw | ivfpq | ivfflat | a FAISS factory string
    routing = false              # or "on"/"off"
    gallery = "iconic"           # optional: this configuration's gallery protocol
    ef_search = 64               # optional HNSW setting
    nprobe = 16                  # optional IVF setting
    rerank = "qe+kr"             # optional: off | qe | kr | qe+kr (see shopsearch.rerank)
    tta = true                   # optional: queries embedded with their mirror image too
    dba = 2                      # optional: database-side augmentation over this many neighbours
    fusion = true                # optional: category head fused into the ranking (weight chosen on val)
    shopper_views = 8            # optional: gallery vectors averaged with this many synthetic shopper views
    pile_views = 4               # optional, with shopper_views: and this many views of the product in piles/rows
    centre = true                # optional: per-domain mean centring (shopsearch.centring); the shopper-photo
                                 # mean comes from the run's --centre-sample photos (labels unused), else the queries'
    adapt = 2                    # optional, with centre: rounds moving catalogue vectors toward the nearest of
                                 # those unlabelled shopper photos (shopsearch.centring.adapt_gallery)
    whiten = 100                 # optional, with centre: whitening fitted on those photos, this shrinkage
                                 # (shopsearch.centring.whitening_matrix), before the adaptation
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from shopsearch.errors import ConfigError

KEYS = ("name", "model", "index", "routing", "gallery", "ef_search", "nprobe", "rerank", "tta", "dba", "fusion",
        "shopper_views", "pile_views", "centre", "adapt", "whiten")
_ON = {"on", "true", "yes", "1"}
_OFF = {"off", "false", "no", "0"}


@dataclass(frozen=True)
class BenchConfig:
    model: str
    index: str = "flat"
    routing: bool = False
    gallery: str | None = None  # None: the run's --gallery
    ef_search: int | None = None
    nprobe: int | None = None
    name: str | None = None
    rerank: str = "off"
    tta: bool = False
    dba: int = 0
    fusion: bool = False
    shopper_views: int = 0
    pile_views: int = 0
    centre: bool = False
    adapt: int = 0
    whiten: float = 0.0

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        parts = [self.model, self.index]
        if self.ef_search is not None:
            parts.append(f"ef={self.ef_search}")
        if self.nprobe is not None:
            parts.append(f"nprobe={self.nprobe}")
        if self.gallery:
            parts.append(f"gallery={self.gallery}")
        parts += (["tta"] if self.tta else []) + ([f"dba={self.dba}"] if self.dba else [])
        parts += [f"shopper-views={self.shopper_views}"] if self.shopper_views else []
        parts += [f"pile-views={self.pile_views}"] if self.pile_views else []
        parts += ["centred"] if self.centre else []
        parts += [f"adapt={self.adapt}"] if self.adapt else []
        parts += [f"whiten={self.whiten:g}"] if self.whiten else []
        parts += ([f"rerank={self.rerank}"] if self.rerank != "off" else []) + (["fusion"] if self.fusion else [])
        parts.append("routing" if self.routing else "no-routing")
        return " ".join(parts)


def parse_routing(value: Any, name: str = "routing") -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _ON:
        return True
    if text in _OFF:
        return False
    raise ConfigError(f"{name} must be on or off, got {value!r}")


def _number(value: Any, key: str, where: str, kind: type, lo: float, hi: float | None) -> Any:
    """`value` as an int or float within [lo, hi] (hi None: no upper bound), else ConfigError."""
    try:
        out = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key} must be {'an integer' if kind is int else 'a number'}, "
                          f"got {value!r}") from None
    if out < lo or (hi is not None and out > hi):
        bounds = f"between {lo:g} and {hi:g}" if hi is not None else f">= {lo:g}"
        raise ConfigError(f"{where}: {key} must be {bounds}")
    return out


def _from_mapping(raw: dict[str, Any], defaults: BenchConfig, where: str) -> BenchConfig:
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(KEYS)}")
    vals: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("routing", "tta", "fusion", "centre"):
            vals[key] = parse_routing(value, key)
        elif key == "rerank":
            from shopsearch.rerank import parse_rerank

            parse_rerank(str(value))  # refused here, before any embedding, when malformed
            vals[key] = str(value).strip().lower()
        elif key in ("dba", "shopper_views", "pile_views", "adapt"):
            vals[key] = _number(value, key, where, int, 0, 64)
        elif key == "whiten":
            vals[key] = _number(value, key, where, float, 0, 1e6)
        elif key in ("ef_search", "nprobe"):
            vals[key] = _number(value, key, where, int, 1, None)
        else:
            text = str(value).strip()
            if not text:
                raise ConfigError(f"{where}: {key} is empty")
            vals[key] = text
    out = replace(defaults, **vals)
    if out.adapt and not out.centre:
        raise ConfigError(f"{where}: adapt works on centred vectors; add centre = true")
    if out.whiten and not out.centre:
        raise ConfigError(f"{where}: whiten works on centred vectors; add centre = true")
    if out.pile_views and not out.shopper_views:
        raise ConfigError(f"{where}: pile_views joins the shopper views; add shopper_views")
    return out


def parse_config(text: str, defaults: BenchConfig) -> list[BenchConfig]:
    """One --config value: a path to a TOML file (one or more configurations) or key=value pairs."""
    path = Path(text)
    if text.endswith(".toml") or path.is_file():
        return load_toml(path, defaults)
    raw: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq:
            raise ConfigError(f"--config {text!r}: expected key=value pairs like model=efficientnet-lite0,index=hnsw")
        raw[key.strip()] = value.strip()
    if not raw:
        raise ConfigError("--config is empty")
    return [_from_mapping(raw, defaults, f"--config {text!r}")]


def load_toml(path: Path, defaults: BenchConfig) -> list[BenchConfig]:
    try:
        import tomllib  # noqa: PLC0415 - stdlib from Python 3.11
    except ModuleNotFoundError:
        raise ConfigError("TOML configuration files need Python >= 3.11; use --config key=value pairs") from None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read configuration file {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    tables = data.get("config")
    if isinstance(tables, dict):
        tables = [tables]
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{path}: expected one or more [[config]] tables")
    return [_from_mapping(t, defaults, f"{path} config #{i}") for i, t in enumerate(tables, start=1)]


def unique_labels(configs: list[BenchConfig]) -> list[BenchConfig]:
    """Configurations with distinct labels (a repeated label gets a #n suffix)."""
    seen: dict[str, int] = {}
    out = []
    for c in configs:
        n = seen.get(c.label, 0) + 1
        seen[c.label] = n
        out.append(c if n == 1 else replace(c, name=f"{c.label} #{n}"))
    return out
