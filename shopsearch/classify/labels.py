"""The two category levels a classifier predicts: fine (a product's own category path)
and coarse (that path cut to `coarse_depth` levels, e.g. 'Fruit/Apple/Granny-Smith' ->
'Fruit/Apple'; 'Fruit/Banana' is its own coarse class)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from shopsearch.errors import ClassifierError

#: root + one level: the Grocery Store's 43 coarse classes exactly
COARSE_DEPTH = 2


def coarse_path(path: str, depth: int = COARSE_DEPTH) -> str:
    """The coarse class of a category path (its first `depth` levels)."""
    return "/".join(path.split("/")[:depth])


@dataclass(frozen=True)
class LabelSpace:
    """Sorted fine and coarse class paths, and which coarse class each fine class is in."""

    fine: tuple[str, ...]
    coarse: tuple[str, ...]
    fine_to_coarse: tuple[int, ...]
    coarse_depth: int = COARSE_DEPTH

    @classmethod
    def from_paths(cls, paths: Iterable[str], coarse_depth: int = COARSE_DEPTH) -> "LabelSpace":
        """Label space of the distinct category paths given (at least two)."""
        fine = tuple(sorted({p.strip("/") for p in paths if p and p.strip("/")}))
        if len(fine) < 2:
            raise ClassifierError(f"a classifier needs at least 2 categories, found {len(fine)}")
        coarse = tuple(sorted({coarse_path(p, coarse_depth) for p in fine}))
        cidx = {c: i for i, c in enumerate(coarse)}
        return cls(fine, coarse, tuple(cidx[coarse_path(p, coarse_depth)] for p in fine), coarse_depth)

    def fine_index(self, path: str) -> int:
        """Index of a fine class; ClassifierError for a category the classifier never saw."""
        try:
            return self._fine_idx[path.strip("/")]
        except KeyError:
            raise ClassifierError(f"category {path!r} is not one of the classifier's {len(self.fine)} classes") from None

    def coarse_index(self, path: str) -> int:
        return self.fine_to_coarse[self.fine_index(path)]

    @property
    def _fine_idx(self) -> dict[str, int]:
        cache = self.__dict__.get("_fi")
        if cache is None:
            cache = {p: i for i, p in enumerate(self.fine)}
            object.__setattr__(self, "_fi", cache)
        return cache

    def to_dict(self) -> dict[str, Any]:
        return {"fine": list(self.fine), "coarse": list(self.coarse),
                "fine_to_coarse": list(self.fine_to_coarse), "coarse_depth": self.coarse_depth}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LabelSpace":
        return cls(tuple(d["fine"]), tuple(d["coarse"]), tuple(int(i) for i in d["fine_to_coarse"]),
                   int(d.get("coarse_depth", COARSE_DEPTH)))
