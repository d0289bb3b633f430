"""The pipeline's low-level pieces, shared by every executor (CPU workers, the GPU lanes,
Ray): the work item, decoding a file at the model's draft scale, preparing one model
input, and the failure a stage reports instead of raising. Imports nothing else of the
embedding package, so every other module of it can import this one."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import numpy as np

from shopsearch.errors import InvalidImageError
from shopsearch.images import DEFAULT_MAX_PIXELS, load_image

#: decode JPEGs at reduced scale (PIL draft, DCT scaling): the models need ~224 px
DRAFT_SIZE = 320
#: the longest side a decoded photo keeps (catalogue images and queries alike)
DECODED_MAX_SIDE = 2 * DRAFT_SIZE

#: why an image was not embedded, as a person reads it (a stage's failure is a value, never raised)
Failure = str
#: one RGB PIL image -> the model's input (a CHW float32 array, or HWC uint8 pixels for a split preprocess)
Preprocess = Callable[[object], np.ndarray]


@dataclass(frozen=True)
class WorkItem:
    key: str  # content sha256 (cache key)
    path: str
    image_id: int | None = None


#: what a decode or prepare stage gives back for one item: its result or why it failed
Prepared = tuple[WorkItem, Union[np.ndarray, Failure]]


def failure_of(e: Exception) -> Failure:
    """The reason a stage reports for an exception: the image's own message for a bad
    image, the exception's type and message for anything else."""
    return str(e) if isinstance(e, InvalidImageError) else f"{type(e).__name__}: {e}"


def decode_source(source: bytes | str | Path, draft_size: int | None = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> object:
    """Bytes or a path -> upright RGB PIL image; JPEGs decoded by PIL draft straight at the
    smallest scale whose both sides stay >= draft_size, anything larger than twice
    DRAFT_SIZE shrunk to it."""
    img = load_image(source, draft_size=draft_size or DRAFT_SIZE, max_pixels=max_pixels)
    if max(img.size) > DECODED_MAX_SIDE:
        img.thumbnail((DECODED_MAX_SIDE, DECODED_MAX_SIDE))
    return img


def decode(item: WorkItem, draft_size: int | None = None) -> tuple[WorkItem, object]:
    """Decoding with failures as values: (item, image) or (item, reason)."""
    try:
        return item, decode_source(item.path, draft_size)
    except Exception as e:  # noqa: BLE001 - a worker must report, never die, on one bad file
        return item, failure_of(e)


def prepare(item: WorkItem, preprocess: Preprocess) -> Prepared:
    """Read, decode and preprocess one item: (item, model input) or (item, failure reason).
    A preprocess with a `draft_size` (SplitPreprocess) decodes JPEGs at that scale."""
    try:
        return item, preprocess(decode_source(item.path, getattr(preprocess, "draft_size", None)))
    except Exception as e:  # noqa: BLE001 - one bad file must never stop the run
        return item, failure_of(e)


def prepare_list(items: list[WorkItem], preprocess: Preprocess) -> list[Prepared]:
    """Decode and prepare `items` in this thread (failures as reason strings)."""
    return [prepare(it, preprocess) for it in items]
