"""Tagging products that have no merchant category with the classifier's prediction
(stored as predicted, with its confidence); a merchant's category is never touched."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads only when there is something to tag
    from shopsearch.classify.router import Classifier
    from shopsearch.embedders.base import Embedder
    from shopsearch.catalogue.store import CatalogueStore
    from shopsearch.config import Settings

log = logging.getLogger("shopsearch.classify")


@dataclass(frozen=True)
class TagReport:
    tagged: int = 0
    merchant: int = 0  # products with a merchant category: left alone
    already_predicted: int = 0  # skipped unless retagging
    no_images: int = 0
    tags: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"tagged": self.tagged, "merchant": self.merchant, "already_predicted": self.already_predicted,
                "no_images": self.no_images, "tags": list(self.tags)}


def tag_products(store: "CatalogueStore", embedder: Embedder, classifier: Classifier, cache_root: Path,
                 retag: bool = False, progress: bool = True) -> TagReport:
    """Predict a category for every product without a merchant category (and, unless
    `retag`, without a prediction yet) from the mean vector of its images."""
    from shopsearch.classify.vectors import embed_paths, mean_vectors

    classifier.artefact.check_fingerprint(embedder.fingerprint)
    merchant = already = no_images = 0
    todo = []
    for prod in store.products():
        if prod.category_source == "merchant":
            merchant += 1
        elif prod.predicted_category and not retag:
            already += 1
        elif not any(i.status == "ok" for i in prod.images):
            no_images += 1
        else:
            todo.append(prod)
    paths, hashes, owner = [], [], []
    for prod in todo:
        for img in prod.images:
            if img.status == "ok":
                paths.append(img.path)
                hashes.append(img.sha256)
                owner.append(prod.id)
    tags = []
    if paths:
        vecs, keep = embed_paths(embedder, paths, hashes, cache_root, progress=progress)
        means, pids = mean_vectors(vecs, [owner[i] for i in keep])
        pf, _ = classifier.probs(means)
        by_id = {p.id: p for p in todo}
        for row, pid in zip(pf, pids):
            best = int(row.argmax())
            path, conf = classifier.labels.fine[best], float(row[best])
            store.set_predicted_category(pid, store.ensure_category(path.split("/")), conf)
            tags.append({"sku": by_id[pid].sku, "category": path, "confidence": round(conf, 4)})
        no_images += len(todo) - len(pids)
    log.info("tagged products", extra={"tagged": len(tags), "merchant": merchant})
    return TagReport(len(tags), merchant, already, no_images, tuple(tags))


def tag_after_import(settings: "Settings", store: "CatalogueStore", progress: bool = True) -> TagReport | None:
    """After an import: tag uncategorised products when a classifier exists for the serving
    index's model (nothing is loaded when there is no index or no classifier for it)."""
    from shopsearch.app import open_index_store
    from shopsearch.classify.paths import artefact_path

    manifest = open_index_store(settings).current_manifest()
    if manifest is None:
        return None
    own_head = artefact_path(settings.classifier_dir, manifest.model_fingerprint).is_file()
    if not own_head and not manifest.model_name.startswith("finetuned:"):
        return None
    from shopsearch.classify.artefact import load_artefact
    from shopsearch.classify.router import Classifier, find_artefact
    from shopsearch.embedders import load_embedder

    embedder = load_embedder(manifest.model_name, settings.device, settings.models_dir)
    path = find_artefact(settings, embedder)
    if path is None:
        return None
    classifier = Classifier.for_embedder(load_artefact(path), embedder)
    return tag_products(store, embedder, classifier, settings.vector_cache_dir, progress=progress)
