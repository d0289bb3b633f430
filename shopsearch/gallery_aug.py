"""Gallery-side augmentation for catalogues of studio photos (one iconic image per product,
the common case for a shop without shopper photos): each catalogue image is also seen as
a shopper would photograph it, on a cluttered background, at an angle, under other light
and partly out of frame, and its gallery vector becomes the unit mean of the views.

Deterministic per image (the seed is derived from the image's content hash), so the same
catalogue always yields the same vectors and they can be cached."""
from __future__ import annotations

import random
from typing import Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps


def _foreground_mask(img: Image.Image, tol: int = 24) -> Image.Image:
    """Studio shots sit on a near-white background: everything else is the product."""
    a = np.asarray(img.convert("RGB"), dtype=np.int16)
    fg = (255 - a).max(axis=2) > tol
    return Image.fromarray((fg * 255).astype(np.uint8)).filter(ImageFilter.MaxFilter(5)).filter(
        ImageFilter.GaussianBlur(2))


def _background(size: tuple[int, int], rng: random.Random, clutter: Sequence[Image.Image]) -> Image.Image:
    """A shelf-like background: a colour gradient with noise, sometimes other products behind."""
    w, h = size
    c0 = np.array([rng.randint(40, 220) for _ in range(3)], np.float32)
    c1 = np.array([rng.randint(40, 220) for _ in range(3)], np.float32)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    bg = c0 * (1 - t) + c1 * t + np.random.default_rng(rng.randint(0, 2**31)).normal(0, 12, (h, w, 3))
    out = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8)).resize((w, h))
    for other in rng.sample(list(clutter), k=min(len(clutter), rng.randint(0, 3))):
        o = other.copy()
        o.thumbnail((int(w * rng.uniform(0.3, 0.6)), int(h * rng.uniform(0.3, 0.6))))
        out.paste(o, (rng.randint(-o.width // 3, w - o.width // 2), rng.randint(-o.height // 3, h - o.height // 2)),
                  _foreground_mask(o))
    return out


def _perspective(img: Image.Image, rng: random.Random, strength: float = 0.12) -> Image.Image:
    w, h = img.size
    d = lambda n: rng.uniform(0, strength) * n  # noqa: E731
    quad = (d(w), d(h), d(w), h - d(h), w - d(w), h - d(h), w - d(w), d(h))
    # white fill: the uncovered corners read as studio background, not as product
    return img.transform((w, h), Image.Transform.QUAD, quad, Image.Resampling.BICUBIC, fillcolor=(255, 255, 255))


def relight(img: Image.Image, rng: random.Random, brightness: tuple[float, float] = (0.6, 1.25),
            contrast: tuple[float, float] = (0.7, 1.2), colour: tuple[float, float] = (0.7, 1.2),
            blur: float = 0.5) -> Image.Image:
    """Other light (brightness, contrast, saturation) and, with probability `blur`, some blur."""
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(*brightness))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(*contrast))
    img = ImageEnhance.Color(img).enhance(rng.uniform(*colour))
    if rng.random() < blur:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    return img


def shopper_view(img: Image.Image, rng: random.Random, clutter: Sequence[Image.Image] = ()) -> Image.Image:
    """One synthetic shopper photo of a studio image."""
    img = img.convert("RGB")
    w, h = img.size
    side = max(w, h)
    canvas = (int(side * rng.uniform(1.15, 1.6)), int(side * rng.uniform(1.15, 1.6)))
    scale = rng.uniform(0.6, 1.0)
    prod = img.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.Resampling.BICUBIC)
    prod = _perspective(prod, rng)
    mask = _foreground_mask(prod)
    out = _background(canvas, rng, clutter)
    x = rng.randint(-prod.width // 6, max(0, canvas[0] - prod.width * 5 // 6))
    y = rng.randint(-prod.height // 6, max(0, canvas[1] - prod.height * 5 // 6))
    out.paste(prod, (x, y), mask)
    # partial views: a crop around the product, sometimes cutting into it
    cx0 = max(0, x + rng.randint(-prod.width // 4, prod.width // 5))
    cy0 = max(0, y + rng.randint(-prod.height // 4, prod.height // 5))
    cx1 = min(canvas[0], x + prod.width + rng.randint(-prod.width // 5, prod.width // 4))
    cy1 = min(canvas[1], y + prod.height + rng.randint(-prod.height // 5, prod.height // 4))
    if cx1 - cx0 > 16 and cy1 - cy0 > 16:
        out = out.crop((cx0, cy0, cx1, cy1))
    out = relight(out, rng)
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    return out


def _tight_mask(img: Image.Image, tol: int = 24) -> Image.Image:
    """The product's mask: everything between its leftmost and rightmost non-white pixel in
    each row and its top and bottom one in each column, so white inside the product (a milk
    carton's sides) stays in; shrunk a little so copies carry no white studio rim."""
    fg = (255 - np.asarray(img.convert("RGB"), dtype=np.int16)).max(axis=2) > tol

    def spans(m: np.ndarray) -> np.ndarray:
        idx = np.arange(m.shape[1])
        first = np.where(m.any(1), np.where(m, idx, m.shape[1]).min(1), m.shape[1])
        last = np.where(m, idx, -1).max(1)
        return (idx >= first[:, None]) & (idx <= last[:, None])

    inside = spans(fg) & spans(fg.T).T
    return Image.fromarray((inside * 255).astype(np.uint8)).filter(ImageFilter.MinFilter(3)).filter(
        ImageFilter.GaussianBlur(1))


def pile_view(img: Image.Image, rng: random.Random) -> Image.Image:
    """One synthetic shopper photo of several copies of the product, rows of them with jitter:
    fruit heaped in a crate, cartons side by side on a shelf, as stores show most products."""
    img = img.convert("RGB")
    img.putalpha(_tight_mask(img))
    side = max(img.size)
    canvas = int(side * rng.uniform(1.5, 2.2))
    out = _background((canvas, canvas), rng, ())
    s = rng.uniform(0.35, 0.6) * canvas / side
    cw, ch = max(1, int(img.width * s)), max(1, int(img.height * s))
    copy0 = img.resize((cw, ch), Image.Resampling.BICUBIC)
    step_x, step_y = cw * rng.uniform(0.7, 1.0), ch * rng.uniform(0.6, 0.95)
    y = -ch * rng.uniform(0.0, 0.4)
    while y < canvas:
        x = -cw * rng.uniform(0.0, 0.5)
        while x < canvas:
            c = copy0.rotate(rng.uniform(-15, 15), Image.Resampling.BICUBIC, expand=True)
            rgb = ImageEnhance.Brightness(c.convert("RGB")).enhance(rng.uniform(0.8, 1.15))
            out.paste(rgb, (int(x + rng.uniform(-0.1, 0.1) * cw), int(y + rng.uniform(-0.1, 0.1) * ch)),
                      c.getchannel("A"))
            x += step_x
        y += step_y
    crop = int(canvas * rng.uniform(0.6, 1.0))
    x0, y0 = rng.randint(0, canvas - crop), rng.randint(0, canvas - crop)
    out = out.crop((x0, y0, x0 + crop, y0 + crop))
    out = relight(out, rng)
    return out


def shopper_views(img: Image.Image, n: int, seed: int, clutter: Sequence[Image.Image] = (),
                  piles: int = 0) -> list[Image.Image]:
    """`n` synthetic shopper photos of one catalogue image, then `piles` of it in piles/rows
    (their own random stream: the first `n` views do not depend on `piles`)."""
    rng, pile_rng = random.Random(seed), random.Random(seed + 1)
    return [shopper_view(img, rng, clutter) for _ in range(n)] + [pile_view(img, pile_rng) for _ in range(piles)]


#: synthetic shopper views per catalogue image an index build of an iconic-only catalogue
#: blends into its vectors (indexer/views_build.py; chosen on the Grocery Store val split)
SHOPPER_VIEWS = 8

#: weight of the shopper views' mean against the catalogue image's own vector (chosen on the
#: Grocery Store val split with an iconic-only gallery; heavier weights did worse there)
VIEW_WEIGHT = 0.5


def blend(own: np.ndarray, views: np.ndarray, weight: float = VIEW_WEIGHT) -> np.ndarray:
    """Unit vectors of own + weight * views (rows)."""
    both = np.asarray(own, np.float32) + weight * np.asarray(views, np.float32)
    return both / np.maximum(np.linalg.norm(both, axis=1, keepdims=True), 1e-12)


def seed_of(content_hash: str) -> int:
    return int(content_hash[:12], 16)


def views_fingerprint(fingerprint: str, n: int, piles: int = 0) -> str:
    """The vector cache of `n` shopper views (+ `piles` pile views) per catalogue image."""
    return f"{fingerprint}+shopper{n}" + (f"+pile{piles}" if piles else "")


def shopper_view_vectors(embedder, items: Sequence[tuple[str, str]], n: int, cache_root, batch_size: int = 32,
                         progress: bool = True, clutter_images: int = 24, piles: int = 0):
    """VectorCache (`views_fingerprint`) holding, per catalogue image content hash, the unit
    mean of the embeddings of its `n` synthetic shopper views and `piles` pile views; only
    images not cached yet are decoded and embedded. `items`: (path, content hash)."""
    import logging

    from tqdm import tqdm

    from shopsearch.embedding.cache import VectorCache
    from shopsearch.errors import InvalidImageError
    from shopsearch.images import load_image

    log = logging.getLogger("shopsearch.gallery")
    cache = VectorCache(cache_root, views_fingerprint(embedder.fingerprint, n, piles), embedder.dim)
    todo = [(p, k) for p, k in dict(items).items() if k not in cache]
    if not todo:
        return cache
    rng = random.Random(0)
    clutter = []
    for p, _ in rng.sample(list(dict(items).items()), k=min(clutter_images, len(items))):
        try:
            im = load_image(p)
            im.thumbnail((256, 256))
            clutter.append(im)
        except (InvalidImageError, OSError):
            continue
    per_image = n + piles
    per_batch = max(1, batch_size // per_image)
    for start in tqdm(range(0, len(todo), per_batch), desc=f"embedding {per_image} shopper views per image", unit="batch",
                      disable=not progress):
        keys, views = [], []
        for path, key in todo[start:start + per_batch]:
            try:
                img = load_image(path)
            except (InvalidImageError, OSError) as e:
                log.warning("catalogue image not augmented", extra={"path": path, "error": str(e)})
                continue
            img.thumbnail((512, 512))
            views += shopper_views(img, n, seed_of(key), [c for c in clutter if c is not img], piles)
            keys.append(key)
        if keys:
            vecs = embedder.encode_images(views).reshape(len(keys), per_image, -1).mean(1)
            cache.put(keys, vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12))
    return cache
