"""Search routing by the query's predicted category (the CategoryRouter of search.py):
the top category when the classifier is confident, the top two when less so, everything
otherwise; the thresholds were chosen on validation data and live in the artefact."""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from shopsearch.classify.artefact import ClassifierArtefact, artefact_path, load_artefact
from shopsearch.classify.head import CategoryHead, combined_probs
from shopsearch.classify.knn import KnnVote
from shopsearch.classify.thresholds import RoutingThresholds
from shopsearch.embedders.base import Embedder
from shopsearch.results import CategoryPrediction

if TYPE_CHECKING:
    from shopsearch.config import Settings

log = logging.getLogger("shopsearch.classify")

#: alternatives shown with a prediction
ALTERNATIVES = 3


class Classifier:
    """An artefact's head, ready to score embedder vectors."""

    def __init__(self, artefact: ClassifierArtefact) -> None:
        self.artefact = artefact
        self.labels = artefact.labels
        self.head = CategoryHead.from_state(artefact.head_config, artefact.head_state)
        self._f2c = torch.tensor(self.labels.fine_to_coarse)
        self.vote = KnnVote.from_dict(artefact.knn) if artefact.knn else None
        # one search asks about its query vector up to three times (routing, fusion boost, the
        # confidence's head probabilities): the last answer is kept, per serving thread
        self._last = threading.local()

    @classmethod
    def for_embedder(cls, artefact: ClassifierArtefact, embedder: Embedder) -> "Classifier":
        """ClassifierError when the artefact was trained on another embedder's vectors."""
        artefact.check_fingerprint(embedder.fingerprint)
        return cls(artefact)

    def probs(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, fine) and (N, coarse) probabilities (read-only for a single vector: kept for reuse)."""
        x = np.ascontiguousarray(np.atleast_2d(np.asarray(vectors, dtype=np.float32)))
        key = x.tobytes() if len(x) == 1 else None  # single queries only: batches are evaluations
        last = getattr(self._last, "value", None)
        if key is not None and last is not None and last[0] == key:
            return last[1]
        with torch.inference_mode():
            pf, pc = combined_probs(*self.head(torch.from_numpy(x)), self._f2c)
        out = (pf.numpy(), pc.numpy())
        if self.vote is not None:
            out = self.vote.mix(*out, x, self.labels.fine_to_coarse)
        if key is not None:
            for a in out:
                a.flags.writeable = False  # shared by every caller of the kept answer
            self._last.value = (key, out)
        return out

    def predict(self, vector: np.ndarray) -> tuple[list[tuple[str, float]], np.ndarray]:
        """(fine classes with probabilities, best first; the fine probability row)."""
        pf = self.probs(vector)[0][0]
        order = np.argsort(-pf)
        return [(self.labels.fine[i], float(pf[i])) for i in order[: ALTERNATIVES + 1]], pf


def fusion_boost(probs: dict[str, float], weight: float) -> dict[str, float]:
    """weight * log p per category (shopsearch.classify.fusion), from category_probs."""
    from shopsearch.classify.fusion import log_prob

    return {c: float(weight * log_prob(p)) for c, p in probs.items()}


class ClassifierRouter:
    """CategoryRouter over a Classifier and its validation-chosen thresholds."""

    def __init__(self, classifier: Classifier, thresholds: RoutingThresholds | None = None) -> None:
        self.classifier = classifier
        self.thresholds = thresholds or classifier.artefact.thresholds

    @classmethod
    def from_artefact(cls, artefact: ClassifierArtefact | Path | str, embedder: Embedder) -> "ClassifierRouter":
        """Router for `embedder` from an artefact (object or file); refuses another embedder's."""
        art = artefact if isinstance(artefact, ClassifierArtefact) else load_artefact(Path(artefact))
        return cls(Classifier.for_embedder(art, embedder))

    @property
    def fusion_weight(self) -> float:
        return self.thresholds.fusion

    @property
    def categories(self) -> tuple[str, ...]:
        """The fine categories, in the order of category_probabilities' columns."""
        return tuple(self.classifier.labels.fine)

    def category_probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """(N, fine categories) probabilities of query vectors."""
        return self.classifier.probs(vectors)[0]

    def category_probs(self, vector: np.ndarray) -> dict[str, float]:
        """One query's probability per fine category; "" stands for a category the head does not
        know (the uniform prior)."""
        pf = self.category_probabilities(vector)[0]
        probs = dict(zip(self.classifier.labels.fine, pf.tolist()))
        probs[""] = 1.0 / len(pf)
        return probs

    def category_boost(self, vector: np.ndarray) -> dict[str, float]:
        """Fusion: what to add to a candidate's similarity per fine category (categories the
        classifier does not know get the uniform prior's)."""
        return fusion_boost(self.category_probs(vector), self.thresholds.fusion)

    def route(self, vector: np.ndarray) -> tuple[CategoryPrediction, tuple[str, ...] | None]:
        """(prediction, category paths to restrict the search to, or None for all)."""
        top, _ = self.classifier.predict(vector)
        p1 = top[0][1]
        p12 = p1 + (top[1][1] if len(top) > 1 else 0.0)
        decision = self.thresholds.decide(p1, p12)
        allowed = {"filter": (top[0][0],), "top2": tuple(c for c, _ in top[:2])}.get(decision)
        pred = CategoryPrediction(category=top[0][0], confidence=p1, level="fine",
                                  alternatives=tuple(top[1:]), routing=decision)
        return pred, allowed


def find_artefact(settings: "Settings", embedder: Embedder) -> Path | None:
    """The head trained for this embedder: a head in the classifiers folder, else the one a
    fine-tuned embedder carries in its own artefact."""
    path = artefact_path(settings.classifier_dir, embedder.fingerprint)
    if path.is_file():
        return path
    own = getattr(embedder, "artefact_path", None)
    return Path(own) if own and Path(own).is_file() else None


def load_router_for(settings: "Settings", embedder: Embedder) -> ClassifierRouter | None:
    """The router for this embedder, or None when no classifier was trained for it."""
    path = find_artefact(settings, embedder)
    if path is None:
        return None
    router = ClassifierRouter.from_artefact(path, embedder)
    log.info("category routing on", extra={"artefact": str(path), "classes": len(router.classifier.labels.fine)})
    return router
