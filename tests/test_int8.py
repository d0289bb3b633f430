"""int8 image towers: calibration saved and reused, vectors close to fp32 and the same for a
query as for the bulk batch, a clear error for every way the int8 model cannot be had, and
the merchandiser's path: `model quantize` -> `index build --model ...+int8` -> search."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torchvision import transforms as T

from indexer.cli import cli
from shopsearch.embedders import int8, load_embedder, parse_spec, torch_base
from shopsearch.embedders.registry import clear_cache
from shopsearch.embedders.torch_base import TorchEmbedder
from shopsearch.embedding.calibrate import calibrate_int8, sample_evenly
from shopsearch.errors import ConfigError, ModelUnavailableError
from tests.conftest import jitter, make_image

needs_cxx = pytest.mark.skipif(not torch_base.cxx_available(), reason="inductor needs a C++ compiler")
# calibration and a dozen images through EfficientNet on one intra-op thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny() -> TorchEmbedder:
    """EfficientNet-lite's layer kinds in miniature: a stride-2 stem, a depthwise 3x3 and a
    pointwise convolution, batch norms, ReLU6, global pooling (and a linear head)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU6(),
                        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU6(),
                        nn.Conv2d(16, 32, 1), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 24))
    for bn in (net[1], net[4]):
        bn.running_mean.uniform_(-0.5, 0.5)
    tf = T.Compose([T.Resize(36), T.CenterCrop(32), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
    return TorchEmbedder("tiny", net, transform=tf, dim=24, fingerprint="tiny-1")


def _inputs(emb: TorchEmbedder, seeds) -> np.ndarray:
    return np.stack([emb.preprocess(make_image(s)) for s in seeds])


@pytest.fixture(scope="module")
def tiny_int8():
    base = _tiny()
    cal = int8.calibrate_tensors(base, [torch.from_numpy(_inputs(base, range(16)))], 32)
    return base, int8.Int8Embedder(base, cal, 32)


@needs_cxx
def test_int8_vectors_are_close_to_fp32_and_independent_of_the_batch(tiny_int8):
    base, q = tiny_int8
    assert q.precision == "int8" and q.fingerprint.startswith("tiny-1+int8:c")
    q.compile(4)
    x = _inputs(base, range(100, 107))  # 7 images: one full batch of 4, then 3 padded to 4
    bulk = q.encode_batch(x)
    one_by_one = np.concatenate([q.encode_batch(x[i:i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(bulk, one_by_one, atol=1e-6)  # a query finds its own indexed vector
    np.testing.assert_allclose(np.linalg.norm(bulk, axis=1), 1.0, atol=1e-5)
    cos = np.sum(bulk * base.encode_batch(x), axis=1)
    assert cos.min() > 0.98, cos
    assert np.abs(bulk[0] - bulk[1]).max() > 1e-3  # different pictures, different vectors


@needs_cxx
def test_calibration_round_trips_and_its_digest_is_in_the_fingerprint(tiny_int8, tmp_path):
    base, q = tiny_int8
    path = int8.save_calibration(q.calibration, tmp_path / "m.int8.pt")
    again = int8.Int8Embedder(base, int8.load_calibration(path), 32)
    assert again.fingerprint == q.fingerprint
    again.warm_up()  # what the web app calls when it loads an index: compiles the one-image graph
    np.testing.assert_allclose(again.encode_images([make_image(9)]), q.encode_images([make_image(9)]), atol=1e-6)
    x = _inputs(base, range(200, 204))
    np.testing.assert_allclose(again.encode_batch(x), q.encode_batch(x), atol=1e-6)
    other = int8.calibrate_tensors(base, [torch.from_numpy(_inputs(base, range(50, 54))) * 3], 32)
    assert other.digest != q.calibration.digest


@needs_cxx
def test_concurrent_first_queries_compile_once_and_agree(tiny_int8):
    from concurrent.futures import ThreadPoolExecutor

    base, q = tiny_int8
    fresh = int8.Int8Embedder(base, q.calibration, 32)  # nothing compiled yet
    x = _inputs(base, range(300, 306))
    with ThreadPoolExecutor(6) as pool:  # six web requests arriving together
        got = list(pool.map(lambda i: fresh.encode_batch(x[i:i + 1]), range(6)))
    np.testing.assert_allclose(np.concatenate(got), q.encode_batch(x), atol=1e-6)


def test_the_wrong_calibration_or_device_is_refused(tiny_int8, tmp_path):
    base, q = tiny_int8
    foreign = int8.Calibration("another-model", 16, q.calibration.state)
    with pytest.raises(ModelUnavailableError, match="made for another-model"):
        int8.Int8Embedder(base, foreign, 32)
    with pytest.raises(ConfigError, match="CPU precision"):
        int8.check_int8_device("cuda:0")
    (tmp_path / "bad.int8.pt").write_bytes(b"\x00 truncated")
    with pytest.raises(ModelUnavailableError, match="cannot read int8 calibration"):
        int8.load_calibration(tmp_path / "bad.int8.pt")


def test_int8_spec_without_a_calibration_names_the_command(tmp_path):
    clear_cache()
    spec = parse_spec("efficientnet-lite0+int8")
    assert spec.precision == "int8" and str(spec) == "efficientnet-lite0+int8"
    with pytest.raises(ModelUnavailableError, match="shopsearch model quantize --model efficientnet-lite0"):
        load_embedder("efficientnet-lite0+int8", "cpu", tmp_path)
    with pytest.raises(ConfigError, match="CPU precision"):
        load_embedder("efficientnet-lite0+int8", "cuda", tmp_path)
    with pytest.raises(ConfigError, match="needs models_dir"):  # never guessed from the environment
        load_embedder("efficientnet-lite0+int8", "cpu")


def test_static_same_padding_keeps_efficientnet_arithmetic():
    import timm

    torch.manual_seed(0)
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        before = net(x)
        assert int8.staticize_same_pad(net, 224) == 5  # the stride-2 convolutions
        after = net(x)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_sample_evenly_spreads_over_the_list():
    assert sample_evenly(list("abcdefghij"), 5) == list("acegi")
    assert sample_evenly(list("abc"), 5) == list("abc")


def _cli(args, data_dir, ok=True):
    res = CliRunner().invoke(cli, ["--data-dir", str(data_dir), *args], catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output
    return res


@needs_cxx
def test_quantize_then_index_and_search_with_efficientnet_int8(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rows = ["sku,title,images"]
    for i in range(12):
        make_image(i, size=(240, 200)).save(imgs / f"p{i}.jpg", quality=92)
        rows.append(f"P{i},Product {i},imgs/p{i}.jpg")
    (imgs / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    data = tmp_path / "data"
    clear_cache()
    _cli(["catalogue", "import", str(tmp_path / "m.csv")], data)
    res = _cli(["model", "quantize", "--images", "8", "--json"], data)
    rep = json.loads(res.stdout)
    assert rep["model"] == "efficientnet-lite0+int8" and rep["images"] == 8 and rep["skipped"] == 0
    assert rep["path"] == str(data.resolve() / "models" / "efficientnet-lite0.int8.pt")
    again = _cli(["model", "quantize", "--images", "8"], data, ok=False)
    assert again.exit_code == 2 and "--force" in again.output  # never overwrites silently
    # a folder with a broken file: it is skipped and reported, not fatal
    folder = calibrate_int8("efficientnet-lite0", sorted(str(p) for p in imgs.iterdir()), 8,
                            out=tmp_path / "folder.int8.pt")
    assert folder.images == 8 and folder.skipped == 1

    # batch 1: the build compiles the one graph the searches below reuse (inductor compiles of
    # EfficientNet are the suite's slowest step); a bulk batch beside the one-image graph is
    # test_int8_vectors_are_close_to_fp32_and_independent_of_the_batch's, on the same layer kinds
    build = json.loads(_cli(["index", "build", "--model", "efficientnet-lite0+int8", "--batch-size", "1", "--json"],
                            data).stdout)
    assert build["vectors"] == 12 and build["model"] == "efficientnet-lite0+int8"
    query = tmp_path / "q.jpg"
    jitter(make_image(5, size=(240, 200)), seed=3).save(query, quality=90)
    found = json.loads(_cli(["search", str(query), "-k", "3", "--json"], data).stdout)
    # generated colour grids look alike to an ImageNet model: the photo's product is among the first three
    assert "P5" in [r["sku"] for r in found["results"]] and found["model"] == "efficientnet-lite0+int8"
    # the query path (decode, resize, model) gives the indexed image its own vector back
    own = json.loads(_cli(["search", str(imgs / "p7.jpg"), "-k", "1", "--json"], data).stdout)
    assert own["results"][0]["sku"] == "P7" and own["results"][0]["score"] > 0.9999
    mismatch = _cli(["search", str(query), "--model", "efficientnet-lite0"], data, ok=False)
    assert mismatch.exit_code == 1 and "model_mismatch" in mismatch.output
