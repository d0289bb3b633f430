"""Advice on the photo itself, given beside its results (which are kept): what a shopper can do
for a better search. Machine-readable codes: a search result's `advice` (the API's `advice`
field), shown in words on the results page.

    too_dark   nearly black (underexposed: a dim room, a finger over the flash): try more light

A flat colour is not advice but a verdict (shopsearch.images.lacks_detail: no match at all).
The check is cheap: a 64 px grey copy, as lacks_detail reads."""
from __future__ import annotations

from typing import Iterable

import numpy as np
from PIL import Image

from shopsearch.images import grey_thumbnail

TOO_DARK = "too_dark"
#: every code, in the order they are given
ADVICE = (TOO_DARK,)

#: a photo is too dark when even its brightest part (the 99th percentile of its grey levels) is
#: under DARK_PEAK and its mean under DARK_MEAN (of 255). The peak tells an underexposed photo
#: from a well-lit photo of a dark product, which has a light background or highlights on the
#: product. Detail cannot tell them apart: an underexposed photo stretched back to full range
#: shows its edges again (and its noise). Of the Grocery Store test and iconic photos (2,566:
#: means from 60, peaks from 133) none is too dark, nor any darkened to 60% of its brightness;
#: at 50% 16 are, at 30% nearly all, at 25% all.
DARK_MEAN = 64.0
DARK_PEAK = 80.0


def too_dark(img: Image.Image | np.ndarray) -> bool:
    """True for a photo (or its grey_thumbnail) too dark to identify a product in: nothing in it is bright."""
    a = grey_thumbnail(img)
    return float(a.mean()) < DARK_MEAN and float(np.percentile(a, 99)) < DARK_PEAK


def photo_advice(img: Image.Image | np.ndarray) -> tuple[str, ...]:
    """The advice codes for the photo searched, or its grey_thumbnail (empty when it looks fine)."""
    return (TOO_DARK,) if too_dark(img) else ()


def known_advice(codes: Iterable[str]) -> tuple[str, ...]:
    """The known codes among `codes` (a results page posts its advice back with its query), in order."""
    given = {str(c) for c in codes}
    return tuple(c for c in ADVICE if c in given)
