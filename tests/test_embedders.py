"""Embedders: offline EfficientNet-Lite0 weights, OpenCLIP code paths, colorhist, specs."""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import time

import numpy as np
import pytest
from PIL import Image, ImageDraw

from shopsearch.embedders import load_embedder, parse_spec
from shopsearch.embedders import registry
from shopsearch.embedders.registry import ModelSpec
from tests.conftest import GROCERY, make_image
from shopsearch.errors import CapabilityError, ConfigError, ModelUnavailableError

DATASET = GROCERY  # SHOPSEARCH_GROCERY_DIR, else the checkout's sibling shared/ folder
BANANA = DATASET / "dataset/test/Fruit/Banana/Banana_004.jpg"
# a dozen images at a time: on one intra-op thread (tests/conftest.py); on a CPU without native
# bf16 the emulated bf16 convolutions took ten times the CPU on two threads
pytestmark = pytest.mark.usefixtures("one_torch_thread")
SMALL_CLIP = "ViT-S-32-alt"  # smallest standard OpenCLIP architecture (~43M params, 256-d)


def generated_images() -> list[Image.Image]:
    """Distinct synthetic images: solid colours, halves, stripes, checkerboards, shapes."""
    images = []
    for colour in [(220, 30, 30), (30, 200, 40), (30, 60, 220), (240, 230, 40), (250, 250, 250), (10, 10, 10)]:
        images.append(Image.new("RGB", (96, 80), colour))
    for a, b in [((255, 0, 0), (0, 0, 255)), ((0, 255, 0), (255, 0, 255))]:
        im = Image.new("RGB", (96, 96), a)
        ImageDraw.Draw(im).rectangle([48, 0, 95, 95], fill=b)
        images.append(im)
    stripes = Image.new("RGB", (96, 96), (255, 140, 0))
    for x in range(0, 96, 16):
        ImageDraw.Draw(stripes).rectangle([x, 0, x + 7, 95], fill=(0, 128, 128))
    images.append(stripes)
    checker = np.indices((96, 96)).sum(0) // 12 % 2
    images.append(Image.fromarray(np.where(checker[..., None] == 1, [200, 0, 200], [0, 200, 200]).astype(np.uint8)))
    disc = Image.new("RGB", (96, 96), (128, 128, 128))
    ImageDraw.Draw(disc).ellipse([20, 20, 76, 76], fill=(255, 220, 0))
    images.append(disc)
    return images


def textured_images(n: int, seed: int = 0) -> list[Image.Image]:
    """Photo-like synthetic images: smooth random colour fields plus sensor-like noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((160, 120), Image.BICUBIC)
        noisy = np.asarray(field, dtype=np.float32) + rng.normal(0, 8, (120, 160, 3))
        out.append(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    return out


def assert_unit_rows(x: np.ndarray, dim: int) -> None:
    assert x.dtype == np.float32 and x.shape[1] == dim
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def effnet():
    return load_embedder("efficientnet-lite0", device="cpu")


# (a) the offline ImageNet weights really are loaded
@pytest.mark.dataset
@pytest.mark.skipif(not DATASET.is_dir(), reason="grocerystore dataset absent")
def test_efficientnet_classifies_banana(effnet):
    logits = effnet.classify_logits([Image.open(BANANA).convert("RGB")])
    assert logits.shape == (1, 1000)
    assert int(logits.argmax()) == 954  # ImageNet "banana"


# (b)
def test_efficientnet_embeddings(effnet):
    images = generated_images()[:6]
    a = effnet.encode_images(images, batch_size=4)
    b = effnet.encode_images(images)
    assert a.shape == (6, 1280)
    assert_unit_rows(a, 1280)
    np.testing.assert_allclose(a, b, atol=1e-5)
    sims = a @ a.T
    assert sims[~np.eye(6, dtype=bool)].max() < 0.999
    assert effnet.dim == 1280 and not effnet.has_text and effnet.device == "cpu"
    assert effnet.fingerprint == load_embedder("efficientnet-lite0", "cpu").fingerprint
    assert effnet.fingerprint.startswith("efficientnet-lite0:timm-tf_efficientnet_lite0:")
    assert effnet.encode_images([]).shape == (0, 1280)
    batch = np.stack([effnet.preprocess(im) for im in images[:2]])
    assert batch.shape == (2, 3, 224, 224) and batch.dtype == np.float32
    np.testing.assert_allclose(effnet.encode_batch(batch), a[:2], atol=1e-5)
    with pytest.raises(CapabilityError):
        effnet.encode_texts(["banana"])


def test_efficientnet_input_size_spec(effnet):
    """efficientnet-lite0@288/1.0: the same weights fed the whole photo at 288 px; its own
    fingerprint, so an index built with plain Lite0 refuses it as a query model (and back)."""
    from shopsearch.embedding.preprocess import draft_size_for
    from shopsearch.errors import ModelMismatchError
    from shopsearch.index import IndexManifest, check_model

    big = load_embedder("efficientnet-lite0@288/1.0", device="cpu")
    assert big.name == "efficientnet-lite0@288/1.0" and big.dim == 1280
    assert big.fingerprint != effnet.fingerprint and ":288:bicubic-crop1.0:" in big.fingerprint
    assert ":224:bicubic-crop0.875:" in effnet.fingerprint
    assert load_embedder("efficientnet-lite0@224/0.875", "cpu").fingerprint == effnet.fingerprint
    # a 300x260 photo: shorter side to 288 / 1.0 (nothing cropped away of a square photo), centre 288
    photo = textured_images(1)[0].resize((300, 260))
    assert big.preprocess(photo).shape == (3, 288, 288)
    assert effnet.preprocess(photo).shape == (3, 224, 224)
    assert draft_size_for(big) == 288 and draft_size_for(effnet) == 256
    # the whole square photo reaches the model at 1.0, the border is cut at 0.875
    square = Image.new("RGB", (348, 348), "white")
    ImageDraw.Draw(square).rectangle((0, 0, 20, 347), fill="black")  # a black band on the left edge
    assert big.preprocess(square)[:, :, :8].max() < -0.9 < effnet.preprocess(square)[:, :, :8].min()
    x = big.encode_images(textured_images(3))
    assert_unit_rows(x, 1280)
    assert (x * effnet.encode_images(textured_images(3))).sum(1).max() < 0.999  # other pixels, other vectors
    for built, query in ((effnet, big), (big, effnet)):
        manifest = IndexManifest("b1", built.name, built.fingerprint, 1280, 0, "flat", "2026-01-01T00:00:00Z")
        check_model(manifest, built.fingerprint)
        with pytest.raises(ModelMismatchError, match=built.name):
            check_model(manifest, query.fingerprint)


# (h) on photo-like inputs; flat single-colour images are degenerate for a CNN and
# drift more under bf16 (cosine down to ~0.97), so they are not used here
def test_efficientnet_bf16_matches_fp32(effnet):
    images = textured_images(6)
    if DATASET.is_dir():
        images += [Image.open(p).convert("RGB") for p in sorted(BANANA.parent.parent.glob("*/*_001.jpg"))[:6]]
    bf16 = load_embedder("efficientnet-lite0+bf16", device="cpu")
    assert bf16.fingerprint == effnet.fingerprint + "+bf16"
    x, y = effnet.encode_images(images), bf16.encode_images(images)
    assert_unit_rows(y, 1280)
    assert (x * y).sum(axis=1).min() > 0.99
    # the ImageNet head runs on the same bf16 weights (bf16 input cast, float32 logits out)
    logits = bf16.classify_logits(images[:2])
    assert logits.dtype == np.float32
    np.testing.assert_array_equal(logits.argmax(1), effnet.classify_logits(images[:2]).argmax(1))


# bf16 on a CPU: the weights are converted once at load (autocast re-cast them on every
# batch and made ViT-B-32 slower than fp32); vectors stay within cosine 0.99 of fp32
def test_openclip_vit_b32_bf16_weights_match_fp32():
    import torch

    fp32 = load_embedder("openclip:ViT-B-32", device="cpu")
    bf16 = load_embedder("openclip:ViT-B-32+bf16", device="cpu")
    assert bf16.precision == "bf16" and bf16.fingerprint == fp32.fingerprint + "+bf16"
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in fp32.model.parameters()} == {torch.float32}
    images = textured_images(4, seed=3) + generated_images()[6:9]
    x, y = fp32.encode_images(images, batch_size=4), bf16.encode_images(images, batch_size=4)
    assert_unit_rows(y, 512)
    assert (x * y).sum(axis=1).min() >= 0.99
    texts = ["a red apple", "oat milk 1 l", "green bell pepper"]
    tx, ty = fp32.encode_texts(texts), bf16.encode_texts(texts)
    assert_unit_rows(ty, 512)
    assert (tx * ty).sum(axis=1).min() >= 0.99
    # the bf16 vectors still rank like the fp32 ones: each image's nearest neighbour agrees
    np.testing.assert_array_equal(np.argsort(-(x @ x.T), axis=1)[:, 1], np.argsort(-(y @ y.T), axis=1)[:, 1])


@pytest.fixture(scope="module")
def random_clip():
    return load_embedder(f"openclip:{SMALL_CLIP}", device="cpu")


# (c)
def test_openclip_random_weights(random_clip):
    images = generated_images()[:2]
    img = random_clip.encode_images(images)
    txt = random_clip.encode_texts(["a red square", "a green square", "a banana"])
    assert img.shape == (2, 256) and txt.shape == (3, 256)
    assert_unit_rows(img, 256)
    assert_unit_rows(txt, 256)
    assert random_clip.has_text and random_clip.dim == 256
    assert "random" in random_clip.fingerprint
    assert random_clip.preprocess(images[0]).shape == (3, 224, 224)


# (d)
def test_openclip_checkpoint_roundtrip(random_clip, tmp_path):
    import torch

    from shopsearch.embedders.openclip import file_sha256, load_openclip

    own = load_openclip(SMALL_CLIP, device="cpu")  # a private copy we may alter
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        for p in own.model.clip.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "clip.pt"
    torch.save(own.model.clip.state_dict(), path)

    loaded = load_embedder(f"openclip:{SMALL_CLIP}@{path}", device="cpu")
    images = generated_images()[:3]
    np.testing.assert_allclose(loaded.encode_images(images), own.encode_images(images), atol=1e-5)
    np.testing.assert_allclose(loaded.encode_texts(["x y"]), own.encode_texts(["x y"]), atol=1e-5)
    assert not np.allclose(loaded.encode_images(images), random_clip.encode_images(images), atol=1e-3)
    assert file_sha256(path)[:16] in loaded.fingerprint
    assert "random" not in loaded.fingerprint

    with pytest.raises(ModelUnavailableError):
        load_embedder(f"openclip:{SMALL_CLIP}@{tmp_path / 'missing.pt'}", device="cpu")
    with pytest.raises(ConfigError, match="ViT-B-32"):
        load_embedder("openclip:ViT-B-33", device="cpu")
    with pytest.raises(ConfigError, match="laion2b_s34b_b79k"):
        load_embedder("openclip:ViT-B-32/no-such-tag", device="cpu")


# (e)
@pytest.mark.parametrize(
    "spec, expected",
    [
        ("auto", ModelSpec("auto")),
        ("efficientnet-lite0", ModelSpec("efficientnet-lite0")),
        ("colorhist", ModelSpec("colorhist")),
        ("efficientnet-lite0+bf16", ModelSpec("efficientnet-lite0", precision="bf16")),
        ("openclip:ViT-B-32/laion2b_s34b_b79k", ModelSpec("openclip", "ViT-B-32", "laion2b_s34b_b79k")),
        ("openclip:ViT-B-32", ModelSpec("openclip", "ViT-B-32")),
        ("openclip:ViT-B-32@/path/to/checkpoint.pt", ModelSpec("openclip", "ViT-B-32", None, "/path/to/checkpoint.pt")),
        ("openclip:ViT-B-32/openai+bf16", ModelSpec("openclip", "ViT-B-32", "openai", precision="bf16")),
        ("openclip:RN50@/ck/a+b.pt+bf16", ModelSpec("openclip", "RN50", None, "/ck/a+b.pt", "bf16")),
        ("efficientnet-lite0@288/1.0", ModelSpec("efficientnet-lite0", input_size=288, crop_pct=1.0)),
        ("EfficientNet-Lite0@288/1+bf16", ModelSpec("efficientnet-lite0", precision="bf16", input_size=288, crop_pct=1.0)),
        ("efficientnet-lite0@320", ModelSpec("efficientnet-lite0", input_size=320)),
        ("efficientnet-lite0@320/0.875", ModelSpec("efficientnet-lite0", input_size=320)),
        # timm's own preprocessing spelled out is the default model, one spec and one fingerprint
        ("efficientnet-lite0@224/0.875", ModelSpec("efficientnet-lite0")),
        ("efficientnet-lite0@224", ModelSpec("efficientnet-lite0")),
    ],
)
def test_parse_spec(spec: str, expected: ModelSpec):
    parsed = parse_spec(spec)
    assert parsed == expected
    assert parse_spec(str(parsed)) == parsed


@pytest.mark.parametrize(
    "spec",
    ["", "  ", "resnet50", "openclip", "openclip:", "openclip:/laion", "openclip:ViT-B-32/",
     "openclip:ViT-B-32@", "clip:ViT-B-32", "colorhist+bf16", "+bf16", "auto+fp16",
     "efficientnet-lite0@", "efficientnet-lite0@big", "efficientnet-lite0@288/", "efficientnet-lite0@288/1.5",
     "efficientnet-lite0@2048", "efficientnet-lite0@288/nan", "colorhist@288"],
)
def test_parse_spec_errors(spec: str):
    with pytest.raises(ConfigError):
        parse_spec(spec)


@pytest.fixture
def empty_model_caches(tmp_path, monkeypatch):
    """No Hugging Face or ~/.cache/clip weights, whatever this machine has cached."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path))


def test_openclip_tag_offline_says_how_to_fix(empty_model_caches):
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match="@/path/to") as e:
        load_embedder("openclip:ViT-B-32/laion2b_s34b_b79k", device="cpu")
    assert time.perf_counter() - start < 3.0
    assert "HF_HUB_OFFLINE is set" in str(e.value) and "unset HF_HUB_OFFLINE" in str(e.value)


def test_openclip_tag_with_the_hub_unreachable_fails_at_once_and_says_why(empty_model_caches, monkeypatch):
    """HF_HUB_OFFLINE unset and no network: one probe of the hub, no download and its ~50 s of
    retries, and no advice to unset a variable that was not set."""
    import huggingface_hub
    import open_clip

    from shopsearch.embedders import openclip

    probed = []

    def unreachable(url, timeout=None, **kwargs):
        probed.append(url)
        raise OSError("[Errno 101] Network is unreachable")

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded although the hub cannot be reached")

    monkeypatch.setattr(openclip, "hf_offline", lambda: False)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", unreachable)
    monkeypatch.setattr(open_clip, "download_pretrained", no_download)
    with pytest.raises(ModelUnavailableError) as e:
        openclip.resolve_tag_weights("ViT-B-32", "laion2b_s34b_b79k")
    assert len(probed) == 1 and probed[0].startswith("https://huggingface.co/laion/")
    msg = str(e.value)
    assert "huggingface.co cannot be reached" in msg and "Network is unreachable" in msg and "@/path/to" in msg
    assert "HF_HUB_OFFLINE" not in msg


def test_openclip_hub_that_answers_is_no_reason_to_stop(monkeypatch):
    """An HTTP answer (here: no such file) means the hub is reachable: the download goes on and
    reports its own error."""
    import huggingface_hub
    from huggingface_hub.errors import RemoteEntryNotFoundError

    from shopsearch.embedders import openclip

    def not_found(url, timeout=None, **kwargs):
        # made without its HTTP response (the transport's class varies across huggingface_hub versions)
        raise RemoteEntryNotFoundError.__new__(RemoteEntryNotFoundError, "404 Client Error: entry not found")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", not_found)
    assert openclip.hub_unreachable({"hf_hub": "org/repo/"}) is None
    assert openclip.hub_unreachable({"url": "https://example.com/w.pt"}) is None  # not on the hub: not probed


# (f)
def test_auto_falls_back_offline(effnet, empty_model_caches, caplog):
    registry._cache.pop(("auto", "cpu", ""), None)
    caplog.set_level("INFO", logger="shopsearch.embedders")
    start = time.perf_counter()
    emb = load_embedder("auto", device="cpu")
    assert time.perf_counter() - start < 3.0
    assert emb.name == "efficientnet-lite0" and emb is effnet
    assert "efficientnet-lite0" in caplog.text
    assert load_embedder("auto", device="cpu") is emb


# (g)
def test_colorhist_self_retrieval():
    emb = load_embedder("colorhist")
    images = generated_images()
    vecs = emb.encode_images(images, batch_size=5)
    assert vecs.shape == (len(images), emb.dim) and emb.dim == 384
    assert_unit_rows(vecs, 384)
    assert (np.argmax(vecs @ vecs.T, axis=1) == np.arange(len(images))).all()
    # resized copies still find their original
    queries = emb.encode_images([im.resize((57, 61)) for im in images])
    assert (np.argmax(queries @ vecs.T, axis=1) == np.arange(len(images))).all()
    np.testing.assert_array_equal(vecs, emb.encode_images(images))
    assert emb.device == "cpu" and not emb.has_text and emb.fingerprint.startswith("colorhist:")
    assert emb.preprocess(images[0]).shape == (3, 64, 64)
    assert emb.encode_images([]).shape == (0, 384)
    with pytest.raises(CapabilityError):
        emb.encode_texts(["red"])


def test_query_decoded_like_the_index_matches_itself(effnet, tmp_path):
    """A large catalogue JPEG searched as a query (CLI path or upload bytes) gives back its
    indexed vector: both are decoded at the pipeline's JPEG draft scale for this model."""
    from shopsearch.embedding import VectorCache, WorkItem, embed_items
    from shopsearch.embedding.preprocess import decode_query, draft_size_for
    from shopsearch.images import load_image

    p = tmp_path / "big.jpg"
    make_image(3, (1800, 1350)).save(p, quality=92)
    cache = VectorCache(tmp_path / "c", effnet.fingerprint, effnet.dim)
    embed_items(effnet, [WorkItem("k", str(p))], cache, progress=False, executor="inline")
    indexed = cache.get_many(["k"])[0]
    query = effnet.encode_images([decode_query(p, effnet)])[0]
    upload = effnet.encode_images([decode_query(p.read_bytes(), effnet)])[0]
    full = effnet.encode_images([load_image(p)])[0]  # what the CLI used to do
    assert float(indexed @ query) > 0.99999 and float(indexed @ upload) > 0.99999
    assert float(indexed @ full) < float(indexed @ query)
    assert draft_size_for(effnet) < 320  # the model's resize size, not the generic default
