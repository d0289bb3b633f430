"""Turning labelled vectors or images into classifier artefacts (both training modes),
and the metrics every artefact records."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from shopsearch.classify.artefact import BackboneSpec, ClassifierArtefact
from shopsearch.classify.data import LabelledImage
from shopsearch.classify.head import CategoryHead, train_head
from shopsearch.classify.labels import LabelSpace
from shopsearch.classify.thresholds import choose_thresholds
from shopsearch.errors import ClassifierError

log = logging.getLogger("shopsearch.classify")

#: a fine-tuned model whose validation fine top-1 is more than this below the frozen head's on
#: the same images is warned about (the one bar every such warning uses)
REFERENCE_MARGIN = 0.05


def accuracy_report(fine_probs: np.ndarray, coarse_probs: np.ndarray, fine_true: np.ndarray,
                    labels: LabelSpace, top_pairs: int = 10) -> dict[str, Any]:
    """Top-1/top-5 per level and the most confused (true -> predicted) fine pairs. With a
    single-level taxonomy the coarse figures are the fine ones, marked `same_as_fine`."""
    fine_true = np.asarray(fine_true)
    coarse_true = np.asarray(labels.fine_to_coarse)[fine_true] if len(fine_true) else fine_true

    def topk(p: np.ndarray, y: np.ndarray, k: int) -> float:
        if len(y) == 0:
            return float("nan")
        k = min(k, p.shape[1])
        return float((np.argsort(-p, axis=1)[:, :k] == y[:, None]).any(axis=1).mean())

    pred = fine_probs.argmax(1) if len(fine_true) else fine_true
    pairs: dict[tuple[int, int], int] = {}
    for t, p in zip(fine_true, pred):
        if t != p:
            pairs[(int(t), int(p))] = pairs.get((int(t), int(p)), 0) + 1
    confused = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:top_pairs]
    fine = {"classes": len(labels.fine), "top1": topk(fine_probs, fine_true, 1), "top5": topk(fine_probs, fine_true, 5)}
    if len(labels.coarse) == len(labels.fine):
        # a single-level taxonomy: the "coarse" level is the fine one, and says so
        return {"samples": int(len(fine_true)), "fine": fine, "coarse": {**fine, "same_as_fine": True},
                "most_confused": [{"true": labels.fine[t], "predicted": labels.fine[p], "count": n}
                                  for (t, p), n in confused]}
    return {
        "samples": int(len(fine_true)),
        "fine": {"classes": len(labels.fine), "top1": topk(fine_probs, fine_true, 1), "top5": topk(fine_probs, fine_true, 5)},
        "coarse": {"classes": len(labels.coarse), "top1": topk(coarse_probs, coarse_true, 1),
                   "top5": topk(coarse_probs, coarse_true, 5)},
        "most_confused": [{"true": labels.fine[t], "predicted": labels.fine[p], "count": n} for (t, p), n in confused],
    }


def head_probs(artefact: ClassifierArtefact, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fine, coarse) probabilities of an artefact (its head, and its nearest-neighbour vote
    when it has one) for embedder vectors."""
    from shopsearch.classify.router import Classifier

    return Classifier(artefact).probs(np.asarray(vectors, np.float32))


def _indices(items: Sequence[LabelledImage], labels: LabelSpace) -> np.ndarray:
    return np.array([labels.fine_index(i.category) for i in items], dtype=np.int64)


def train_frozen(vectors: np.ndarray, items: Sequence[LabelledImage], val_vectors: np.ndarray,
                 val_items: Sequence[LabelledImage], fingerprint: str, embedder_name: str, hidden: int = 0,
                 epochs: int = 300, target: float = 0.97, seed: int = 0, refit: bool = True,
                 views: tuple[np.ndarray, np.ndarray] | None = None,
                 c_grid: tuple[float, ...] | None = None) -> ClassifierArtefact:
    """A head on frozen embeddings, thresholds from the validation vectors: the cross-validated
    logistic-regression probe (hidden=0) or a small MLP trained for `epochs`. `refit`: the probe
    served is refitted on train + val once validation has chosen its settings (metrics["val"]
    stay those of the head fitted on train alone, an honest figure). `views`: (vectors, index of
    the training image each is a synthetic view of), added to the head's training samples with
    their image's label (shopsearch.classify.photo_views); cross-validation keeps an image and
    its views in one fold and scores the images only. The nearest-neighbour vote and the fusion
    weight use the images alone. `c_grid`: the probe's candidate C values (default the
    probe's grid; a single value skips the cross-validation)."""
    labels = LabelSpace.from_paths(i.category for i in items)
    known = set(labels.fine)
    val_keep = [j for j, it in enumerate(val_items) if it.category in known]
    if len(val_keep) < len(val_items):
        log.warning("validation images of unseen categories ignored", extra={"n": len(val_items) - len(val_keep)})
    val_vectors, val_items = np.asarray(val_vectors)[val_keep], [val_items[j] for j in val_keep]
    yf = _indices(items, labels)
    f2c = np.asarray(labels.fine_to_coarse)
    extra: dict[str, Any] = {"train_samples": len(items), "mode": "frozen"}
    vx, src = (np.zeros((0, vectors.shape[1]), np.float32), np.zeros(0, np.int64)) if views is None else views
    src = np.asarray(src, np.int64)
    xs = np.vstack([np.asarray(vectors, np.float32), np.asarray(vx, np.float32)])
    ys = np.concatenate([yf, yf[src]])
    groups = np.concatenate([np.arange(len(yf)), src])
    scored = np.arange(len(ys)) < len(yf)
    if len(src):
        extra["train_view_vectors"] = int(len(src))
    if hidden > 0:
        head = train_head(xs, ys, f2c[ys], len(labels.fine), len(labels.coarse), hidden=hidden, epochs=epochs,
                          seed=seed)
        extra["head"] = f"mlp-{hidden}"
    else:  # the linear head is the cross-validated logistic-regression probe itself
        from shopsearch.classify.probe import C_GRID, fit_probe, head_from_probes

        grid = C_GRID if c_grid is None else tuple(c_grid)
        pf = fit_probe(xs, ys, len(labels.fine), c_grid=grid, seed=seed, groups=groups, scored=scored)
        pc = fit_probe(xs, f2c[ys], len(labels.coarse), c_grid=grid, seed=seed, groups=groups, scored=scored)
        head = head_from_probes(pf, pc)
        extra.update({"head": "logistic-cv", "C_fine": pf.c, "C_coarse": pc.c,
                      "cv_fine_top1": pf.cv_accuracy.get(pf.c)})
    art = _artefact(head, fingerprint, embedder_name, labels)
    art, extra = _with_vote(art, val_vectors, val_items, vectors, yf, extra)
    art = with_validation(art, val_vectors, val_items, target, extra, gallery=(vectors, yf))
    if hidden > 0 or not refit or not val_items:
        return art
    # Everything was chosen on val (C, thresholds, fusion weight, the figures reported): the
    # served head is then refitted with those settings on train + val, more photos of each class.
    from dataclasses import replace

    from shopsearch.classify.probe import fit_probe, head_from_probes

    yv = _indices(val_items, labels)
    xa, ya = np.vstack([xs, val_vectors]), np.concatenate([ys, yv])  # the val photos' views are not made
    refitted = head_from_probes(fit_probe(xa, ya, len(labels.fine), c_grid=(pf.c,), seed=seed),
                                fit_probe(xa, f2c[ya], len(labels.coarse), c_grid=(pc.c,), seed=seed))
    served = _artefact(refitted, fingerprint, embedder_name, labels)
    # the vote keeps the settings validation chose, over the refitted head's photos
    photos = np.vstack([vectors, val_vectors])
    knn = None if art.knn is None else {**art.knn, "vectors": torch.from_numpy(photos.astype(np.float16)),
                                        "labels": torch.from_numpy(np.concatenate([yf, yv]))}
    return replace(served, thresholds=art.thresholds, knn=knn,
                   metrics={**art.metrics, "refit": "train+val", "train_samples": len(yf) + len(yv)})


def _with_vote(art: ClassifierArtefact, val_vectors: np.ndarray, val_items: Sequence[LabelledImage],
               vectors: np.ndarray, y: np.ndarray, extra: dict[str, Any]) -> tuple[ClassifierArtefact, dict[str, Any]]:
    """The artefact with the nearest-neighbour vote over the training vectors mixed in when
    validation says it helps (shopsearch.classify.knn), and what was chosen."""
    from dataclasses import replace

    from shopsearch.classify.knn import choose_vote

    if not val_items:
        return art, extra
    yv = _indices(val_items, art.labels)
    pf, _ = head_probs(art, val_vectors)
    vote, _table = choose_vote(val_vectors, yv, pf, vectors, y, len(art.labels.fine))
    info = {**vote.settings(), "val_top1_head": float((pf.argmax(1) == yv).mean())}
    return (replace(art, knn=vote.to_dict()) if vote.weight > 0 else art), {**extra, "knn_vote": info}


def _artefact(head: CategoryHead, fingerprint: str, embedder_name: str, labels: LabelSpace) -> ClassifierArtefact:
    config, state = dict(head.config), {k: v.detach().clone() for k, v in head.state_dict().items()}
    return ClassifierArtefact(fingerprint, embedder_name, labels, config, state, kind="head")


def with_validation(art: ClassifierArtefact, val_vectors: np.ndarray, val_items: Sequence[LabelledImage],
                    target: float, extra: dict[str, Any],
                    gallery: tuple[np.ndarray, np.ndarray] | None = None) -> ClassifierArtefact:
    """The artefact with thresholds and validation metrics filled in from val vectors; with a
    labelled `gallery` (vectors, fine class indices) also the fusion weight."""
    from dataclasses import replace

    if len(val_items) == 0:
        log.warning("no validation images: routing thresholds disabled")
        return replace(art, metrics={**art.metrics, **extra})
    pf, pc = head_probs(art, val_vectors)
    y = _indices(val_items, art.labels)
    th = choose_thresholds(pf, y, target)
    if gallery is not None:
        from shopsearch.classify.fusion import choose_weight

        weight, table = choose_weight(val_vectors, y, pf, gallery[0], gallery[1])
        th = replace(th, fusion=weight)
        extra = {**extra, "fusion_val_precision_at_1": table}
    return replace(art, thresholds=th, metrics={**art.metrics, **extra, "val": accuracy_report(pf, pc, y, art.labels)})


def finetune_artefact(train: Sequence[LabelledImage], val: Sequence[LabelledImage], cfg: Any, device: str,
                      weights_path: str | Path | None = None, base_fingerprint: str = "efficientnet-lite0",
                      name: str = "finetuned", target: float = 0.97, store_dtype: torch.dtype = torch.float16,
                      progress: bool = True, reference_top1: float | None = None) -> ClassifierArtefact:
    """Fine-tune EfficientNet-Lite0 + head; the artefact defines a new embedder (its own fingerprint).

    `reference_top1`: the frozen head's validation fine top-1 on the same images; a run that
    ends far below it gets a warning in metrics["warnings"] (for the caller to say: the CLI judges
    it again on the served figure, with_serving_choices, and says only that)."""
    from shopsearch.classify.finetune import finetune
    from shopsearch.embedders.finetuned import DEFAULT_ARCH, backbone_fingerprint, imagenet_backbone

    if not train:
        raise ClassifierError("no training images")
    labels = LabelSpace.from_paths(i.category for i in train)
    known = set(labels.fine)
    val = [v for v in val if v.category in known]
    res = finetune(imagenet_backbone(weights_path), train, val, labels, cfg, device=device, progress=progress)
    state = {k: (v.to(store_dtype) if v.is_floating_point() else v) for k, v in res.backbone_state.items()}
    fp = backbone_fingerprint(DEFAULT_ARCH, cfg.img_size, res.config["crop_pct"], state)
    bb = BackboneSpec(DEFAULT_ARCH, cfg.img_size, res.config["crop_pct"], state, base_fingerprint)
    art = ClassifierArtefact(fp, f"finetuned:{name}", labels, dict(res.head.config),
                             {k: v.detach().clone() for k, v in res.head.state_dict().items()},
                             kind="finetuned", backbone=bb,
                             metrics={"mode": "finetune", "train_samples": len(train), "best_epoch": res.best_epoch,
                                      "weights": res.weights,
                                      "history": res.history, "seconds": round(res.seconds, 1), "config": res.config})
    if res.val_fine_probs is None:
        return art
    from dataclasses import replace

    y = _indices(val, labels)
    val_report = accuracy_report(res.val_fine_probs, res.val_coarse_probs, y, labels)
    warnings = below_reference(val_report["fine"]["top1"], reference_top1)
    if warnings:
        log.info("fine-tuned head far below the frozen head on validation",
                 extra={"val_top1": val_report["fine"]["top1"], "frozen_val_top1": reference_top1})
    return replace(art, thresholds=choose_thresholds(res.val_fine_probs, y, target),
                   metrics={**art.metrics, "val": val_report, "frozen_val_top1": reference_top1,
                            "warnings": warnings})


def with_serving_choices(art: ClassifierArtefact, vectors: np.ndarray, items: Sequence[LabelledImage],
                         val_vectors: np.ndarray, val_items: Sequence[LabelledImage], target: float = 0.97
                         ) -> ClassifierArtefact:
    """A fine-tuned model's serving settings chosen on validation photos, as the frozen head's
    are: the nearest-neighbour vote over the model's own vectors of its training photos (kept
    only where it helps on val), the fusion weight and the routing thresholds, all read from
    the served path (vectors of the fine-tuned embedder). metrics["val"] becomes the served
    figure; the trained head's alone stays in metrics["val_head"]. The vote then also holds
    the validation photos, as the frozen head's refit does."""
    from dataclasses import replace

    known = set(art.labels.fine)
    keep = [j for j, it in enumerate(items) if it.category in known]
    vectors, items = np.asarray(vectors, np.float32)[keep], [items[j] for j in keep]
    vkeep = [j for j, it in enumerate(val_items) if it.category in known]
    val_vectors, val_items = np.asarray(val_vectors, np.float32)[vkeep], [val_items[j] for j in vkeep]
    if not val_items or not items:
        return art
    y, yv = _indices(items, art.labels), _indices(val_items, art.labels)
    extra = {"val_head": art.metrics.get("val")}
    voted, extra = _with_vote(replace(art, knn=None), val_vectors, val_items, vectors, y, extra)
    served = with_validation(voted, val_vectors, val_items, target, extra, gallery=(vectors, y))
    served = _rechecked(served, art.metrics.get("warnings") or [])
    if served.knn is None:
        return served
    photos = np.vstack([vectors, val_vectors])
    return replace(served, knn={**served.knn, "vectors": torch.from_numpy(photos.astype(np.float16)),
                                "labels": torch.from_numpy(np.concatenate([y, yv]))})


def _rechecked(served: ClassifierArtefact, before: list[str]) -> ClassifierArtefact:
    """The frozen-head warning judged again on the served figure (head + vote), which is what
    searches and tags use: a head that alone validated far below can serve above the frozen one."""
    from dataclasses import replace

    top1 = served.metrics["val"]["fine"]["top1"]
    reference = served.metrics.get("frozen_val_top1")
    now = below_reference(top1, reference) if before else []
    if before and not now:
        log.info(f"as served (with its nearest-neighbour vote) the fine-tuned model validates at {top1:.1%}, not "
                 f"more than {REFERENCE_MARGIN * 100:g} points below the frozen head's {reference:.1%}: the warning "
                 "about the head alone is withdrawn")
    return replace(served, metrics={**served.metrics, "warnings": now})


def below_reference(top1: float, reference: float | None, margin: float = REFERENCE_MARGIN) -> list[str]:
    """The warning (not logged: the caller says it, once) when a fine-tuned model validates
    more than `margin` below the frozen head (too few epochs, a learning rate too high, a broken
    average): it would serve worse results."""
    if reference is None or not top1 < reference - margin:
        return []
    return [f"the fine-tuned model's validation top-1 ({top1:.1%}) is more than {margin * 100:g} points below the "
            f"frozen head's ({reference:.1%}) on the same images: it would search and classify worse than the "
            "model it started from; train longer, or keep the frozen model"]
