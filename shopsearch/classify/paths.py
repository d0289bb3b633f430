"""Where classifier artefacts live (torch-free, so cheap checks import nothing heavy)."""
from __future__ import annotations

import hashlib
from pathlib import Path


def artefact_path(classifier_dir: Path, fingerprint: str) -> Path:
    """Where the head for an embedder fingerprint lives (one per embedder)."""
    return Path(classifier_dir) / f"head-{hashlib.sha256(fingerprint.encode()).hexdigest()[:16]}.pt"
