"""Regions of a query photo: the shopper's crop box, and the objects found in a photo that
holds several products, without any trained detector.

Object proposals are classical: the connected foreground blobs (pixels far from the photo's
border colour, which is how product photos and shelves on a plain ground look) and a
multi-scale grid of windows. Every candidate is embedded in one batch and searched; a
candidate's score is the calibrated confidence of its first product (how well it matches
the catalogue), and overlapping or same-product candidates are suppressed."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageFilter

from shopsearch.errors import InvalidRegionError
from shopsearch.images import DEFAULT_MAX_PIXELS, lacks_detail, load_image, upright_size
from shopsearch.results import SearchFilters, SearchResult, plain_number

#: a crop smaller than this many pixels on a side is refused (nothing recognisable is left)
MIN_CROP_PX = 16
#: proposals overlapping a better one by more than this (IoU) are dropped
NMS_IOU = 0.3
#: foreground blobs searched per photo, the largest first: a photo of many small things (an
#: 8x8 grid of coloured squares has 64 blobs) costs no more than one of a few products. Each
#: proposal is embedded and searched, so a photo costs at most MAX_BLOBS + 23 grid windows;
#: the composite benchmark's photos have 0 to 5 blobs, and keeping 4 changes none of its
#: figures (benchmarks/RESULTS.md, composite_regions_grocerystore), 3 lowers them
MAX_BLOBS = 4


@dataclass(frozen=True)
class Box:
    """A rectangle in fractions of the (upright) image: left, top, width, height in 0..1."""

    x: float
    y: float
    w: float
    h: float

    def pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, upper, right, lower) for PIL, inside the image."""
        left, upper = round(self.x * width), round(self.y * height)
        right, lower = round((self.x + self.w) * width), round((self.y + self.h) * height)
        return max(0, left), max(0, upper), min(width, right), min(height, lower)

    def iou(self, other: "Box") -> float:
        ix = max(0.0, min(self.x + self.w, other.x + other.w) - max(self.x, other.x))
        iy = max(0.0, min(self.y + self.h, other.y + other.h) - max(self.y, other.y))
        inter = ix * iy
        union = self.w * self.h + other.w * other.h - inter
        return inter / union if union > 0 else 0.0

    def to_dict(self) -> dict[str, float]:
        return {"x": round(self.x, 4), "y": round(self.y, 4), "w": round(self.w, 4), "h": round(self.h, 4)}

    def to_param(self) -> str:
        return ",".join(f"{v:.4f}" for v in (self.x, self.y, self.w, self.h))


def parse_box(text: str) -> Box:
    """`x,y,w,h` in fractions of the image -> Box; InvalidRegionError (400) saying what is wrong."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 4:
        raise InvalidRegionError(f"crop must be four numbers x,y,w,h (fractions of the photo, 0 to 1), not {text!r}")
    try:
        if not plain_number(str(text)):
            raise ValueError(text)
        x, y, w, h = (float(p) for p in parts)
    except ValueError:
        raise InvalidRegionError(f"crop must be four numbers x,y,w,h (fractions of the photo, 0 to 1), "
                                 f"not {text!r}") from None
    if not all(np.isfinite(v) for v in (x, y, w, h)):
        raise InvalidRegionError("crop values must be finite numbers between 0 and 1")
    if x < 0 or y < 0 or x >= 1 or y >= 1:
        raise InvalidRegionError(f"crop x and y must be at least 0 and below 1, not {x:g},{y:g}")
    if w <= 0 or h <= 0:
        raise InvalidRegionError(f"crop width and height must be above 0, not {w:g},{h:g}")
    if x + w > 1 + 1e-6 or y + h > 1 + 1e-6:
        raise InvalidRegionError(f"the crop box leaves the photo: x+w = {x + w:g} and y+h = {y + h:g} must be at most 1")
    return Box(x, y, min(w, 1 - x), min(h, 1 - y))


def _pixels_to_search(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """The box's pixels in a width x height photo; InvalidRegionError when too small to search."""
    left, upper, right, lower = box.pixels(width, height)
    if right - left < MIN_CROP_PX or lower - upper < MIN_CROP_PX:
        raise InvalidRegionError(f"the crop box is {right - left}x{lower - upper} pixels of this {width}x{height} "
                                 f"photo; it must be at least {MIN_CROP_PX} pixels on each side")
    return left, upper, right, lower


def crop(image: Image.Image, box: Box) -> Image.Image:
    """The part of an upright image inside `box`; InvalidRegionError when too small to search."""
    return image.crop(_pixels_to_search(box, *image.size))


def crop_source(source: bytes, decoded: Image.Image, box: Box, model_px: int, max_side: int,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The part of a photo inside `box`, cut at the resolution the model needs.

    `decoded` is the photo as a query is decoded: shrunk to at most `max_side` pixels a side
    (JPEGs straight at a reduced scale), so a small box of a large photo would be cut from a
    few dozen pixels, or refused as too small although the photo has plenty. Such a box is cut
    from the photo decoded again at the scale where the box's shorter side reaches `model_px`
    (full size at most); the part is then shrunk to `max_side` like any query photo."""
    left, upper, right, lower = box.pixels(*decoded.size)
    if min(right - left, lower - upper) >= model_px:
        return crop(decoded, box)
    full = upright_size(source)
    if full is not None:  # a box too small even at full size is refused before the photo is decoded again
        _pixels_to_search(box, *full)
    need = int(np.ceil(model_px / min(box.w, box.h)))
    with load_image(source, draft_size=need, max_pixels=max_pixels) as sharp:
        if sharp.size[0] <= decoded.size[0]:  # the decoded photo was not shrunk: nothing to gain
            return crop(decoded, box)
        part = crop(sharp, box)
        part.load()  # before the photo it was cut from is closed
    if max(part.size) > max_side:
        part.thumbnail((max_side, max_side))
    return part


# -- proposals --------------------------------------------------------------------------------
def _foreground_boxes(image: Image.Image, work: int = 96, min_area: float = 0.01) -> list[Box]:
    """Blobs that differ from the border colour (connected components of a small mask)."""
    small = image.convert("RGB").copy()
    small.thumbnail((work, work))
    a = np.asarray(small.filter(ImageFilter.MedianFilter(3)), np.float32)
    h, w = a.shape[:2]
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    ground = np.median(border, axis=0)
    spread = np.median(np.abs(border - ground)) + 1.0
    mask = np.linalg.norm(a - ground, axis=2) > max(30.0, 4 * spread)
    labels = np.zeros((h, w), np.int32)
    boxes, current = [], 0
    for sy in range(h):
        for sx in range(w):
            if not mask[sy, sx] or labels[sy, sx]:
                continue
            current += 1
            stack, ys, xs = [(sy, sx)], [], []
            labels[sy, sx] = current
            while stack:
                cy, cx = stack.pop()
                ys.append(cy)
                xs.append(cx)
                for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = current
                        stack.append((ny, nx))
            x0, x1, y0, y1 = min(xs), max(xs) + 1, min(ys), max(ys) + 1
            if (x1 - x0) * (y1 - y0) >= min_area * w * h and len(xs) >= 0.25 * (x1 - x0) * (y1 - y0):
                boxes.append(Box(x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h))
    if len(boxes) == 1 and boxes[0].w * boxes[0].h > 0.9:
        return []  # the whole photo is foreground: no plain ground to separate objects from
    return boxes


def _grid_boxes() -> list[Box]:
    """Windows at three scales: halves, 2x2 quarters, and 3x3 thirds (overlapping by half)."""
    out = [Box(0, 0, 0.5, 1), Box(0.5, 0, 0.5, 1), Box(0, 0, 1, 0.5), Box(0, 0.5, 1, 0.5),
           Box(0.2, 0.2, 0.6, 0.6)]
    out += [Box(x, y, 0.5, 0.5) for y in (0, 0.25, 0.5) for x in (0, 0.25, 0.5)]
    out += [Box(x, y, 1 / 3, 1 / 3) for y in (0, 1 / 3, 2 / 3) for x in (0, 1 / 3, 2 / 3)]
    return out


def _pad(b: Box, frac: float = 0.08) -> Box:
    """A blob with a margin of `frac` of its size on each side (edges blur into the ground)."""
    px, py = frac * b.w, frac * b.h
    x, y = max(0.0, b.x - px), max(0.0, b.y - py)
    return Box(x, y, min(1 - x, b.w + 2 * px), min(1 - y, b.h + 2 * py))


def _largest_blobs(image: Image.Image) -> list[Box]:
    """The MAX_BLOBS largest foreground blobs (ties: the first found), padded, in the order found."""
    blobs = _foreground_boxes(image)
    keep = sorted(sorted(range(len(blobs)), key=lambda i: -blobs[i].w * blobs[i].h)[:MAX_BLOBS])
    return [_pad(blobs[i]) for i in keep]


def propose_boxes(image: Image.Image) -> list[Box]:
    """Candidate object boxes: the largest foreground blobs first, then the grid."""
    return _largest_blobs(image) + _grid_boxes()


# -- finding objects ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Region:
    """An object found in the photo: where, how sure, and the products it matches."""

    box: Box
    confidence: float | None
    match: str | None
    score: float  # the first product's raw similarity
    result: SearchResult
    source: str  # "foreground" | "grid"
    #: the crop's query vector and whether the crop lacks detail, so that a page can search the
    #: same region again (new filters, more results) without the photo
    vector: np.ndarray | None = field(default=None, compare=False, repr=False)
    flat: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"box": self.box.to_dict(), "crop": self.box.to_param(),
                "confidence": round(self.confidence, 4) if self.confidence is not None else None,
                "match": self.match, "score": round(self.score, 4), "source": self.source}


def find_objects(service: Any, image: Image.Image, max_objects: int = 4, k: int = 5,
                 filters: SearchFilters = SearchFilters()) -> list[Region]:
    """Up to `max_objects` regions of `image`, best first, each with its own search result.
    Regions whose first product is a 'none' match, or that repeat a better region's first
    product or overlap it, are left out. At most MAX_BLOBS + 23 proposals are embedded and searched."""
    blobs = _largest_blobs(image)
    boxes = blobs + _grid_boxes()
    crops, kept = [], []
    for b in boxes:
        left, upper, right, lower = b.pixels(*image.size)
        if right - left >= MIN_CROP_PX and lower - upper >= MIN_CROP_PX:
            crops.append(image.crop((left, upper, right, lower)))
            kept.append(b)
    if not crops:
        return []
    vecs = service.embedder.encode_images(crops)
    candidates = []
    for i, (b, v, crop) in enumerate(zip(kept, vecs, crops)):
        # scored as the whole photo is (the category head fused in where the shop has one), so the
        # calibration fitted on that path applies: a region gets a confidence and 'none' regions go;
        # a patch of plain ground identifies nothing
        flat = lacks_detail(crop)
        res = service.search_vector(v, k=k, filters=filters, flat=flat)
        if not res.hits:
            continue
        rank = res.confidence if res.confidence is not None else res.hits[0].score
        candidates.append((rank, Region(b, res.confidence, res.match, res.hits[0].score, res,
                                        "foreground" if i < len(blobs) else "grid", v, flat)))
    candidates.sort(key=lambda t: -t[0])
    chosen: list[Region] = []
    for _, r in candidates:
        if r.match == "none":
            continue
        if any(r.box.iou(c.box) > NMS_IOU or r.result.hits[0].sku == c.result.hits[0].sku for c in chosen):
            continue
        chosen.append(r)
        if len(chosen) == max_objects:
            break
    return chosen


def region_skus(regions: Sequence[Region], k: int) -> set[str]:
    """Every product in the first k of any region (the composite benchmark's 'found')."""
    return {h.sku for r in regions for h in r.result.hits[:k]}
