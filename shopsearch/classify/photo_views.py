"""Synthetic views of labelled training photos for the frozen head (`classify train --views N`).

A head on frozen embeddings sees each training photo once, as it was taken; shoppers photograph
the same products closer, further, at an angle, under other light. Each training image is also
embedded as N shopper-like views and the head trains on the photos plus their views (same
label). Studio shots (a near-white border: catalogue images) get the gallery augmenter's
shopper views (shopsearch/gallery_aug.py: background, clutter, perspective); shopper photos get
crops, small rotations, mirror, lighting and blur.

View i of an image is deterministic (seeded by its content hash and i) and cached on its own
(model fingerprint + "+photoview{i}", keyed by the content hash), so the first N views of a
run asking for more are the N views of a run asking for fewer, and reruns embed nothing."""
from __future__ import annotations

import logging
import math
import random
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

from shopsearch.embedders.base import Embedder
from shopsearch.gallery_aug import relight, seed_of, shopper_view

log = logging.getLogger("shopsearch.classify")

#: synthetic views per training photo `classify train` adds by default (chosen on the Grocery
#: Store val split with the frozen Lite0: benchmarks/results/classify_views_grocerystore_val.json;
#: 2-4 views score no better there, and which draw the single view is moves val as much:
#: classify_views_more_grocerystore_val.json)
TRAIN_VIEWS = 1


def is_studio(img: Image.Image, tol: int = 24, share: float = 0.8) -> bool:
    """A catalogue studio shot: at least `share` of its border pixels are near-white."""
    a = np.asarray(img.convert("RGB"), dtype=np.int16)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return float(((255 - border).max(axis=1) <= tol).mean()) >= share


def photo_view(img: Image.Image, rng: random.Random) -> Image.Image:
    """One shopper-like view of a shopper photo: a crop (closer or off-centre), a small
    rotation, sometimes mirrored, other light and some blur."""
    img = img.convert("RGB")
    w, h = img.size
    area = rng.uniform(0.35, 1.0) * w * h
    aspect = rng.uniform(3 / 4, 4 / 3)
    cw, ch = min(w, int(round((area * aspect) ** 0.5))), min(h, int(round((area / aspect) ** 0.5)))
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    out = img.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        # rotated, then cut to the largest same-shaped rectangle inside: no empty corners
        theta = math.radians(rng.uniform(-12, 12))
        s = 1.0 / (math.cos(abs(theta)) + math.sin(abs(theta)) * max(cw / ch, ch / cw))
        rot = out.rotate(math.degrees(theta), Image.Resampling.BICUBIC, expand=False)
        iw, ih = max(1, int(cw * s)), max(1, int(ch * s))
        out = rot.crop(((cw - iw) // 2, (ch - ih) // 2, (cw - iw) // 2 + iw, (ch - ih) // 2 + ih))
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    return relight(out, rng, (0.65, 1.3), (0.75, 1.25), (0.7, 1.3), blur=0.3)


def training_view(img: Image.Image, seed: int, index: int, clutter: Sequence[Image.Image] = ()) -> Image.Image:
    """View `index` of a training image (deterministic for its seed and index)."""
    rng = random.Random(seed * 1009 + index)
    if is_studio(img):
        return shopper_view(img, rng, clutter)
    return photo_view(img, rng)


def view_fingerprint(fingerprint: str, index: int) -> str:
    return f"{fingerprint}+photoview{index}"


def view_vectors(embedder: Embedder, items: Sequence[tuple[str, str]], n: int, cache_root: Path,
                 batch_size: int = 32, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(vectors (images, n, dim), present (images,) bool): the embeddings of `n` views of each
    (path, content hash) image; only views not cached yet are made and embedded. An image the
    augmenter cannot decode is not present (its row is zeros)."""
    from tqdm import tqdm

    from shopsearch.embedding.cache import VectorCache
    from shopsearch.errors import InvalidImageError
    from shopsearch.images import load_image

    caches = [VectorCache(Path(cache_root), view_fingerprint(embedder.fingerprint, i), embedder.dim)
              for i in range(n)]
    keys = [k for _, k in items]
    missing = [np.flatnonzero(~c.present(keys)) for c in caches] if keys else []
    todo = sorted(set(np.concatenate(missing).tolist())) if missing else []
    clutter: list[Image.Image] = []
    if todo:  # studio shots are pasted over other catalogue images, as in gallery_aug
        for p, _ in random.Random(0).sample(list(items), k=min(24, len(items))):
            try:
                im = load_image(p)
                if is_studio(im):
                    im.thumbnail((256, 256))
                    clutter.append(im)
            except (InvalidImageError, OSError):
                continue
    per_batch = max(1, batch_size // max(1, n))
    for start in tqdm(range(0, len(todo), per_batch), desc=f"embedding {n} views per training image",
                      unit="batch", disable=not progress or not todo):
        batch: dict[int, list[tuple[int, Image.Image]]] = {}
        for j in todo[start:start + per_batch]:
            path, key = items[j]
            try:
                img = load_image(path, draft_size=512)
            except (InvalidImageError, OSError) as e:
                log.warning("training image not augmented", extra={"path": path, "error": str(e)})
                continue
            img.thumbnail((512, 512))
            for i, c in enumerate(caches):
                if key not in c:
                    batch.setdefault(i, []).append((j, training_view(img, seed_of(key), i, clutter)))
        for i, pairs in batch.items():
            vecs = embedder.encode_images([im for _, im in pairs])
            caches[i].put([keys[j] for j, _ in pairs], vecs)
    out = np.zeros((len(items), n, embedder.dim), np.float32)
    present = np.ones(len(items), bool)
    for i, c in enumerate(caches):
        have = c.present(keys) if keys else np.zeros(0, bool)
        present &= have
        if have.any():
            out[have, i] = c.get_many([k for k, h in zip(keys, have) if h])
    return out, present
