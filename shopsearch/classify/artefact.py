"""The classifier artefact: one versioned file holding the head, its labels, routing
thresholds and metrics, bound to the fingerprint of the embedder whose vectors it reads;
a fine-tuned one also holds the backbone (and so defines a new embedder).

Saved with torch.save and read with weights_only=True (plain containers and tensors only)."""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from shopsearch.classify.labels import LabelSpace
from shopsearch.classify.paths import artefact_path  # noqa: F401 - re-exported

#: the fingerprint suffix of a model run in bf16 (shopsearch.embedders.torch_base)
BF16 = "+bf16"
from shopsearch.classify.thresholds import RoutingThresholds
from shopsearch.errors import ClassifierError

FORMAT = "shopsearch-classifier"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class BackboneSpec:
    """A fine-tuned image backbone: timm architecture, input size, weights."""

    arch: str
    img_size: int
    crop_pct: float
    state: dict[str, torch.Tensor]
    base_fingerprint: str = ""  # the embedder it was fine-tuned from

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "img_size": self.img_size, "crop_pct": self.crop_pct,
                "state": self.state, "base_fingerprint": self.base_fingerprint}


@dataclass(frozen=True)
class ClassifierArtefact:
    fingerprint: str  # fingerprint of the embedder whose vectors the head reads
    embedder_name: str
    labels: LabelSpace
    head_config: dict[str, Any]
    head_state: dict[str, torch.Tensor]
    thresholds: RoutingThresholds = RoutingThresholds()
    metrics: dict[str, Any] = field(default_factory=dict)
    kind: str = "head"  # "head" (frozen embeddings) | "finetuned"
    backbone: BackboneSpec | None = None
    #: the nearest-neighbour vote mixed with the head (shopsearch.classify.knn), None: the head alone
    knn: dict[str, Any] | None = None
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def check_fingerprint(self, fingerprint: str) -> None:
        """ClassifierError unless the artefact was trained on this embedder's vectors. The same
        weights in bf16 count as the same vectors (checked against fp32 when a bf16 model loads):
        a fine-tuned model's head is trained in fp32 and a bf16 CPU builds and serves it in bf16."""
        if fingerprint.removesuffix(BF16) != self.fingerprint.removesuffix(BF16):
            raise ClassifierError(
                f"classifier was trained on vectors of {self.embedder_name!r} (fingerprint {self.fingerprint}); "
                f"this embedder has fingerprint {fingerprint}: retrain it with `shopsearch classify train`")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "kind": self.kind,
            "fingerprint": self.fingerprint, "embedder_name": self.embedder_name,
            "labels": self.labels.to_dict(), "head_config": dict(self.head_config),
            "head_state": {k: v.detach().cpu().float() for k, v in self.head_state.items()},
            "thresholds": self.thresholds.to_dict(), "metrics": self.metrics, "created_at": self.created_at,
            "backbone": self.backbone.to_dict() if self.backbone else None, "knn": self.knn,
        }

    def save(self, path: Path) -> Path:
        """Write atomically (temp file + rename): a crash never leaves half an artefact."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            torch.save(self.to_dict(), tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path


def load_artefact(path: Path) -> ClassifierArtefact:
    """Read and validate an artefact; ClassifierError when missing, corrupt or of another version."""
    path = Path(path)
    if not path.is_file():
        raise ClassifierError(f"no classifier artefact at {path}")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, unsafe content
        raise ClassifierError(f"cannot read classifier artefact {path}: {exc}") from exc
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ClassifierError(f"{path} is not a ShopSearch classifier artefact")
    if d.get("format_version") != FORMAT_VERSION:
        raise ClassifierError(f"{path} has format version {d.get('format_version')}; "
                              f"this code reads version {FORMAT_VERSION}: retrain the classifier")
    bb = d.get("backbone")
    return ClassifierArtefact(
        fingerprint=d["fingerprint"], embedder_name=d["embedder_name"], labels=LabelSpace.from_dict(d["labels"]),
        head_config=dict(d["head_config"]), head_state=dict(d["head_state"]),
        thresholds=RoutingThresholds.from_dict(d.get("thresholds") or {}), metrics=dict(d.get("metrics") or {}),
        kind=d.get("kind", "head"), created_at=d.get("created_at", ""),
        backbone=BackboneSpec(bb["arch"], int(bb["img_size"]), float(bb["crop_pct"]), dict(bb["state"]),
                              bb.get("base_fingerprint", "")) if bb else None,
        knn=d.get("knn"),  # absent from artefacts saved before the vote existed
    )
