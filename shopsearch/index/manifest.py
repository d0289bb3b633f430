"""What a saved index build says about itself (manifest.json): the model that built it, its
segments' files and checksums, and the search settings its build chose."""
from __future__ import annotations

from dataclasses import dataclass, field

from shopsearch.errors import ModelMismatchError

MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class IndexManifest:
    build_id: str
    model_name: str
    model_fingerprint: str
    dim: int
    count: int
    index_type: str
    created: str
    index_sha256: str = ""  # the base segment
    format_version: int = FORMAT_VERSION
    #: segments (shopsearch/index/segments.py); "" / 0 for a build of one segment
    delta_sha256: str = ""  # a delta in one FAISS file (builds made before delta parts)
    tombstones_sha256: str = ""
    base_count: int = 0  # vectors in the base segment, tombstoned ones included
    delta_count: int = 0
    dead_count: int = 0
    #: the delta segment's part files, oldest first: [file name, sha256] each
    delta_parts: list[list[str]] = field(default_factory=list)
    #: HNSW efSearch chosen by the build's recall probe (shopsearch/index/recall_probe.py); 0: the
    #: size rule (sizing.ef_for_size), as for builds made before the probe and other index types
    ef_search: int = 0
    #: what that probe measured (RecallProbe.to_dict()); empty when none ran
    recall_probe: dict = field(default_factory=dict)
    #: how index_type was chosen: "auto" (by the catalogue's size, so it follows the catalogue as
    #: it grows) or "fixed" (asked for with --index: later builds and updates keep it)
    index_choice: str = "auto"


def check_model(manifest: IndexManifest, fingerprint: str) -> None:
    """Queries must use the model that built the index."""
    if manifest.model_fingerprint != fingerprint:
        raise ModelMismatchError(
            f"index build {manifest.build_id} was made with model {manifest.model_name!r} "
            f"(fingerprint {manifest.model_fingerprint}); the query model has fingerprint {fingerprint}. "
            f"Use --model {manifest.model_name} or rebuild the index."
        )
