"""Per-domain mean centring: catalogue photos and shopper photos are two domains, and each
has its own mean direction in the embedding space (white studio background against shelves
and hands). Subtracting each domain's own mean before the cosine similarity removes what
every photo of a domain shares, so the similarity is left with what tells products apart.

No training and no labels: the gallery mean is the catalogue vectors' mean; the query mean
is the mean of shopper photos' vectors, estimated from searches already logged (the
feedback log keeps every query vector) or from a folder of unlabelled shopper photos.
It helps most where the two domains differ most, a catalogue of one studio photo per
product. A build made with it stores both means (`centring.npz`, its folder); gallery
vectors are stored centred and every query is centred by the service before it searches.
A build may also adapt the catalogue to the shopper photos (`adapt_gallery`); the centred
sample is then stored in the same file, so rebuilds from the vector cache repeat it."""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shopsearch.embedders.base import l2_normalize
from shopsearch.errors import ConfigError, IndexCorruptError

#: the centring's file in a build folder
CENTRING_FILE = "centring.npz"
#: fewer shopper photos than this give a query mean too noisy to use
MIN_QUERY_SAMPLE = 20


@dataclass(frozen=True)
class DomainCentring:
    """The two domain means of one model's (unit) vectors."""

    gallery_mean: np.ndarray = field(repr=False)
    query_mean: np.ndarray = field(repr=False)
    base_fingerprint: str
    info: dict[str, Any] = field(default_factory=dict, compare=False)  # sample sizes and sources (for people)
    #: catalogue adaptation (adapt_gallery): the centred shopper photos the catalogue vectors
    #: move toward, and how many rounds; kept with the means so that every rebuild of the
    #: gallery from the vector cache (compactions, re-adds) moves it the same way
    sample: np.ndarray | None = field(default=None, repr=False, compare=False)
    adapt_rounds: int = 0

    @property
    def sha256(self) -> str:
        h = hashlib.sha256(self.base_fingerprint.encode())
        for m in (self.gallery_mean, self.query_mean):
            h.update(np.ascontiguousarray(m, dtype=np.float32).tobytes())
        if self.adapts:
            h.update(f"adapt{self.adapt_rounds}".encode())
            h.update(np.ascontiguousarray(self.sample, dtype=np.float16).tobytes())
        return h.hexdigest()

    @property
    def adapts(self) -> bool:
        """Whether whole-gallery builds move the catalogue vectors toward the shopper sample."""
        return self.adapt_rounds > 0 and self.sample is not None and len(self.sample) > 0

    def with_adaptation(self, shopper_vectors: np.ndarray | None, rounds: int = 0) -> "DomainCentring":
        """This centring, adapting the catalogue toward these (raw, unit) shopper-photo vectors
        for `rounds` rounds (0 or no vectors: no adaptation). At most MAX_ADAPT_SAMPLE photos
        are kept (a seeded draw): the file stays small and a build's cost bounded."""
        from dataclasses import replace

        if rounds <= 0 or shopper_vectors is None or len(shopper_vectors) == 0:
            return replace(self, sample=None, adapt_rounds=0)
        v = np.asarray(shopper_vectors, np.float32)
        if len(v) > MAX_ADAPT_SAMPLE:
            v = v[np.sort(np.random.default_rng(0).choice(len(v), MAX_ADAPT_SAMPLE, replace=False))]
        return replace(self, sample=self.query(v).astype(np.float16), adapt_rounds=int(rounds),
                       info={**self.info, "adapt_rounds": int(rounds), "adapt_sample": int(len(v))})

    def adapted(self, centred: np.ndarray, movable: np.ndarray | None = None) -> np.ndarray:
        """A whole centred gallery adapted (adapt_gallery) when this centring adapts, else as given."""
        if not self.adapts or not len(centred):
            return centred
        return adapt_gallery(centred, np.asarray(self.sample, np.float32), self.adapt_rounds, movable=movable)

    def gallery(self, vectors: np.ndarray) -> np.ndarray:
        """Catalogue vectors (N, dim) -> centred unit vectors."""
        return l2_normalize(np.atleast_2d(np.asarray(vectors, np.float32)) - self.gallery_mean)

    def query(self, vector: np.ndarray) -> np.ndarray:
        """Shopper-photo vectors (N, dim) or one (dim,) -> centred unit vectors of the same shape."""
        v = np.asarray(vector, np.float32)
        out = l2_normalize(np.atleast_2d(v) - self.query_mean)
        return out[0] if v.ndim == 1 else out

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        extra = {"sample": np.asarray(self.sample, np.float16), "adapt_rounds": np.array(self.adapt_rounds)} \
            if self.adapts else {}
        np.savez(buf, gallery_mean=self.gallery_mean.astype(np.float32),
                 query_mean=self.query_mean.astype(np.float32), base_fingerprint=np.array(self.base_fingerprint),
                 info=np.array(json.dumps(self.info, default=str)), **extra)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "centring") -> "DomainCentring":
        try:
            with np.load(io.BytesIO(data)) as z:
                g, q = np.asarray(z["gallery_mean"], np.float32), np.asarray(z["query_mean"], np.float32)
                base, info = str(z["base_fingerprint"]), json.loads(str(z["info"]))
                # files written before adaptation existed hold the means alone
                sample = np.asarray(z["sample"], np.float16) if "sample" in z.files else None
                rounds = int(z["adapt_rounds"]) if "adapt_rounds" in z.files else 0
        except (OSError, ValueError, KeyError) as e:
            raise IndexCorruptError(f"{where} is unreadable: {e}") from None
        if g.ndim != 1 or g.shape != q.shape:
            raise IndexCorruptError(f"{where}: expected two means of one length, got {g.shape} and {q.shape}")
        if sample is not None and (sample.ndim != 2 or sample.shape[1] != g.shape[0]):
            raise IndexCorruptError(f"{where}: adaptation sample of shape {sample.shape} for means of {g.shape}")
        return cls(g, q, base, info, sample, rounds)

    @classmethod
    def load(cls, path: Path) -> "DomainCentring":
        return cls.from_bytes(Path(path).read_bytes(), str(path))


def fit_centring(gallery_vectors: np.ndarray, query_vectors: np.ndarray, base_fingerprint: str,
                 query_source: str) -> DomainCentring:
    """Both means from unit vectors of the model with `base_fingerprint`. ConfigError when
    there are no catalogue vectors or fewer than MIN_QUERY_SAMPLE shopper photos."""
    g = np.asarray(gallery_vectors, np.float32)
    q = np.asarray(query_vectors, np.float32)
    if g.ndim != 2 or len(g) == 0:
        raise ConfigError("centring needs the catalogue's vectors; the catalogue has none")
    if q.ndim != 2 or len(q) < MIN_QUERY_SAMPLE or q.shape[1] != g.shape[1]:
        raise ConfigError(
            f"centring needs at least {MIN_QUERY_SAMPLE} shopper photos of this model to estimate their mean "
            f"(got {len(q) if q.ndim == 2 else 0} from {query_source}); log some searches first or give a folder "
            "of unlabelled shopper photos")
    return DomainCentring(g.mean(0), q.mean(0), base_fingerprint,
                          {"gallery_vectors": int(len(g)), "query_vectors": int(len(q)), "query_source": query_source})


#: share of a catalogue vector kept when it moves toward its shopper photos (chosen on val)
ADAPT_KEEP = 0.5
#: rounds of adaptation a build makes when it adapts (chosen on val)
ADAPT_ROUNDS = 2
#: shopper photos kept for adaptation (a seeded draw beyond this)
MAX_ADAPT_SAMPLE = 20000


def adapt_gallery(gallery: np.ndarray, sample: np.ndarray, rounds: int, keep: float = ADAPT_KEEP,
                  movable: np.ndarray | None = None) -> np.ndarray:
    """Catalogue vectors moved toward the unlabelled shopper photos nearest to them, both
    already centred (`DomainCentring.gallery`, `.query`): each round gives every shopper
    photo to its most similar catalogue vector and replaces that vector with
    unit(keep * its original + (1 - keep) * unit(mean of its photos)). No labels: a
    k-means over the shopper sample seeded with the catalogue. It pulls a studio photo
    toward how its product looks on a shelf, which helps where the catalogue has one
    studio photo per product; vectors no photo chose are left as they were. `movable`
    (bool per row): rows that may move; the others (vectors already adapted, read back from
    an index) still draw photos to themselves but keep their vector."""
    g0 = np.atleast_2d(np.asarray(gallery, np.float32))
    u = np.atleast_2d(np.asarray(sample, np.float32))
    g = g0.copy()
    if len(u) == 0 or len(g0) == 0:
        return g
    for _ in range(max(0, int(rounds))):
        nearest = (u @ g.T).argmax(1)
        sums = np.zeros_like(g0)
        np.add.at(sums, nearest, u)
        chosen = np.bincount(nearest, minlength=len(g0)) > 0
        if movable is not None:
            chosen &= np.asarray(movable, bool)
        g = g0.copy()
        g[chosen] = keep * g0[chosen] + (1.0 - keep) * l2_normalize(sums[chosen])
        g = l2_normalize(g)
    return g


def build_centring(build_dir: Path) -> DomainCentring | None:
    """The centring stored with an index build (None: the build holds the model's own vectors)."""
    path = Path(build_dir) / CENTRING_FILE
    return DomainCentring.load(path) if path.is_file() else None
