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
sample is then stored in the same file, so rebuilds from the vector cache repeat it. An
adapted centring also whitens (`whitening_matrix`): after the means, both domains' vectors
go through one linear map fitted on the shopper photos' spread, which damps the directions
in which shopper photos of any product vary most (light, clutter, angle) before the cosine;
the map is stored in the same file."""
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
    #: (dim, dim) map applied after the means to both domains (whitening_matrix), or None
    whitening: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def sha256(self) -> str:
        h = hashlib.sha256(self.base_fingerprint.encode())
        for m in (self.gallery_mean, self.query_mean):
            h.update(np.ascontiguousarray(m, dtype=np.float32).tobytes())
        if self.adapts:
            h.update(f"adapt{self.adapt_rounds}".encode())
            h.update(np.ascontiguousarray(self.sample, dtype=np.float16).tobytes())
        if self.whitening is not None:
            h.update(b"whiten")
            h.update(np.ascontiguousarray(self.whitening, dtype=np.float32).tobytes())
        return h.hexdigest()

    @property
    def adapts(self) -> bool:
        """Whether whole-gallery builds move the catalogue vectors toward the shopper sample."""
        return self.adapt_rounds > 0 and self.sample is not None and len(self.sample) > 0

    def with_whitening(self, shopper_vectors: np.ndarray | None, shrink: float = 0.0) -> "DomainCentring":
        """This centring whitening both domains after their means with the map fitted on these
        (raw, unit) shopper-photo vectors (whitening_matrix, `shrink`); 0 or no vectors: none."""
        from dataclasses import replace

        info = {k: v for k, v in self.info.items() if k != "whiten_shrink"}
        if shrink <= 0 or shopper_vectors is None or len(shopper_vectors) < 2:
            return replace(self, whitening=None, info=info)
        plain = replace(self, whitening=None)
        w = whitening_matrix(plain.query(np.asarray(shopper_vectors, np.float32)), shrink)
        return replace(self, whitening=w, info={**info, "whiten_shrink": float(shrink)})

    def with_adaptation(self, shopper_vectors: np.ndarray | None, rounds: int = 0,
                        whiten: float = 0.0) -> "DomainCentring":
        """This centring, adapting the catalogue toward these (raw, unit) shopper-photo vectors
        for `rounds` rounds (0 or no vectors: no adaptation, no whitening), whitened first with
        shrink `whiten` (0: not whitened). At most MAX_ADAPT_SAMPLE photos are kept (a seeded
        draw): the file stays small and a build's cost bounded."""
        from dataclasses import replace

        if rounds <= 0 or shopper_vectors is None or len(shopper_vectors) == 0:
            return replace(self.with_whitening(None), sample=None, adapt_rounds=0)
        v = np.asarray(shopper_vectors, np.float32)
        if len(v) > MAX_ADAPT_SAMPLE:
            v = v[np.sort(np.random.default_rng(0).choice(len(v), MAX_ADAPT_SAMPLE, replace=False))]
        c = self.with_whitening(v, whiten)
        return replace(c, sample=c.query(v).astype(np.float16), adapt_rounds=int(rounds),
                       info={**c.info, "adapt_rounds": int(rounds), "adapt_sample": int(len(v))})

    def adapted(self, centred: np.ndarray, movable: np.ndarray | None = None) -> np.ndarray:
        """A whole centred gallery adapted (adapt_gallery) when this centring adapts, else as given."""
        if not self.adapts or not len(centred):
            return centred
        return adapt_gallery(centred, np.asarray(self.sample, np.float32), self.adapt_rounds, movable=movable)

    def gallery(self, vectors: np.ndarray) -> np.ndarray:
        """Catalogue vectors (N, dim) -> centred (and whitened, when it whitens) unit vectors."""
        return self._whiten(np.atleast_2d(np.asarray(vectors, np.float32)) - self.gallery_mean)

    def query(self, vector: np.ndarray) -> np.ndarray:
        """Shopper-photo vectors (N, dim) or one (dim,) -> centred (and whitened, when it
        whitens) unit vectors of the same shape."""
        v = np.asarray(vector, np.float32)
        out = self._whiten(np.atleast_2d(v) - self.query_mean)
        return out[0] if v.ndim == 1 else out

    def _whiten(self, centred: np.ndarray) -> np.ndarray:
        return l2_normalize(centred if self.whitening is None else centred @ self.whitening)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        extra = {"sample": np.asarray(self.sample, np.float16), "adapt_rounds": np.array(self.adapt_rounds)} \
            if self.adapts else {}
        if self.whitening is not None:
            extra["whitening"] = np.asarray(self.whitening, np.float32)
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
                whitening = np.asarray(z["whitening"], np.float32) if "whitening" in z.files else None
        except (OSError, ValueError, KeyError) as e:
            raise IndexCorruptError(f"{where} is unreadable: {e}") from None
        if g.ndim != 1 or g.shape != q.shape:
            raise IndexCorruptError(f"{where}: expected two means of one length, got {g.shape} and {q.shape}")
        if sample is not None and (sample.ndim != 2 or sample.shape[1] != g.shape[0]):
            raise IndexCorruptError(f"{where}: adaptation sample of shape {sample.shape} for means of {g.shape}")
        if whitening is not None and whitening.shape != (g.shape[0], g.shape[0]):
            raise IndexCorruptError(f"{where}: whitening of shape {whitening.shape} for means of {g.shape}")
        return cls(g, q, base, info, sample, rounds, whitening)

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
#: shrinkage of the whitening an adapted build makes, in units of the shopper photos' mean
#: variance per dimension (chosen on the Grocery Store val split, iconic-only gallery, and
#: checked on the train photos as queries, one half of them the sample, the other the queries)
WHITEN_SHRINK = 100.0


def whitening_matrix(centred_sample: np.ndarray, shrink: float) -> np.ndarray:
    """(dim, dim) symmetric map (C + shrink * mean(eig C) * I)^(-1/2) of the centred shopper
    photos' covariance C: directions in which shopper photos vary most are damped, the rest
    kept; the shrinkage (relative to the mean variance, so independent of the model's scale)
    keeps it well defined with fewer photos than dimensions and stops rare directions from
    being blown up. Scaled to unit mean gain (the vectors are normalised after it anyway)."""
    x = np.asarray(centred_sample, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ConfigError("whitening needs at least two shopper photos")
    if shrink <= 0:
        raise ConfigError(f"whitening shrink must be positive, got {shrink}")
    cov = np.cov(x, rowvar=False)
    eig, vecs = np.linalg.eigh(cov)
    eig = np.maximum(eig, 0.0)
    gain = (eig + shrink * max(float(eig.mean()), 1e-12)) ** -0.5
    return ((vecs * (gain / gain.mean())) @ vecs.T).astype(np.float32)


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
