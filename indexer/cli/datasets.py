"""Where the commands look for the Grocery Store dataset when none is named."""
from __future__ import annotations

from pathlib import Path

#: where the Grocery Store dataset sits beside a checkout (the tests' and the Makefile's shared copy)
SHARED_GROCERY = Path("shared") / "datasets" / "grocerystore"


def default_grocery() -> Path:
    """The dataset beside this checkout (../shared/datasets/grocerystore from the repository, whatever
    the current directory), else the same path from the current directory (an installed package)."""
    checkout = Path(__file__).resolve().parents[3] / SHARED_GROCERY
    here = Path("..") / SHARED_GROCERY
    return next((p for p in (checkout, here) if (p / "dataset").is_dir()), checkout)
