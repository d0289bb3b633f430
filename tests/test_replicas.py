"""The replicas executor (issue 18): single-threaded copies of the model in processes, each
embedding whole batches. Same vectors as the other executors, in item order, failures
reported, a replica's death costs one image, and Ctrl-C or a model error in a replica stops the
run with every vector received so far kept and no replica left behind."""
from __future__ import annotations

import multiprocessing as mp
import sys

import numpy as np
import pytest
import torch
from torch import nn

from shopsearch.embedders.torch_base import TorchEmbedder
from shopsearch.embedding import pipeline, tuning
from shopsearch.embedding.cache import VectorCache
from shopsearch.embedding.pipeline import WorkItem, embed_items, tuned_config
from shopsearch.errors import ConfigError
from tests.conftest import FakeEmbedder, sha

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="replicas are forked"),
              pytest.mark.usefixtures("one_torch_thread")]


def _items(paths) -> list[WorkItem]:
    return [WorkItem(sha(p), str(p), i + 1) for i, p in enumerate(paths)]


def _tiny_torch() -> TorchEmbedder:
    """A torch model behind a real torchvision transform, so the replicas run the split
    preprocess and encode_tensor as a real model does."""
    from torchvision import transforms as T

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU6(), nn.Conv2d(8, 16, 3, groups=8),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    tf = T.Compose([T.Resize(40), T.CenterCrop(32), T.ToTensor(), T.Normalize((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))])
    return TorchEmbedder("tiny", net, transform=tf, dim=16, fingerprint="tiny-1")


def _no_replicas_left() -> bool:
    return not [p for p in mp.active_children() if p.is_alive()]


def test_replicas_give_the_threads_vectors_in_order_and_write_chunks(tmp_path, image_dir):
    items = _items(image_dir(37))
    emb = _tiny_torch()
    ref = VectorCache(tmp_path / "ref", emb.fingerprint, emb.dim)
    embed_items(emb, items, ref, batch_size=8, workers=2, progress=False, executor="thread")
    cache = VectorCache(tmp_path / "c", emb.fingerprint, emb.dim)
    rep = embed_items(emb, items, cache, batch_size=8, workers=2, chunk_size=8, progress=False, executor="replicas")
    assert (rep.embedded, rep.skipped, rep.failed) == (37, 0, [])
    keys = [it.key for it in items]
    np.testing.assert_array_equal(cache.get_many(keys), ref.get_many(keys))
    assert len(list(cache.dir.glob("chunk-*.npz"))) == 5  # a chunk per batch of 8, the last partial
    assert _no_replicas_left()


def test_replicas_report_bad_images_and_embed_the_rest(tmp_path, image_dir):
    good = _items(image_dir(10))
    bad_file = tmp_path / "corrupt.jpg"
    bad_file.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    bad = WorkItem(sha(bad_file), str(bad_file), 99)
    items = good[:3] + [bad] + good[3:]
    cache = VectorCache(tmp_path / "c", "fake-grid4x4", 48)
    rep = embed_items(FakeEmbedder(), items, cache, batch_size=4, workers=2, progress=False, executor="replicas")
    ref = VectorCache(tmp_path / "ref", "fake-grid4x4", 48)
    embed_items(FakeEmbedder(), good, ref, batch_size=4, progress=False, executor="inline")
    assert rep.embedded == 10 and [(it, "not an image format" in why) for it, why in rep.failed] == [(bad, True)]
    keys = [it.key for it in good]
    np.testing.assert_array_equal(cache.get_many(keys), ref.get_many(keys))


def test_ctrl_c_keeps_what_was_received_and_leaves_no_replica(tmp_path, image_dir, monkeypatch):
    items = _items(image_dir(40))
    seen = []
    real = pipeline.RunSink.vectors

    def interrupted_after_two_batches(self, keys, vecs):
        real(self, keys, vecs)
        seen.extend(keys)
        if len(seen) >= 8:
            raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.RunSink, "vectors", interrupted_after_two_batches)
    cache = VectorCache(tmp_path / "c", "fake-grid4x4", 48)
    with pytest.raises(KeyboardInterrupt):
        embed_items(FakeEmbedder(), items, cache, batch_size=4, workers=2, progress=False, executor="replicas")
    assert len(seen) == 8 and all(k in cache for k in seen)  # flushed although no chunk was full
    assert _no_replicas_left()
    monkeypatch.undo()
    rest = embed_items(FakeEmbedder(), items, VectorCache(tmp_path / "c", "fake-grid4x4", 48), batch_size=4,
                       workers=2, progress=False, executor="replicas")
    assert (rest.skipped, rest.embedded) == (8, 32)  # the next run resumes where Ctrl-C stopped it


class BreaksOnThirdBatch(FakeEmbedder):
    def encode_batch(self, batch):
        if self.calls >= 8:  # this replica's third batch of 4
            raise RuntimeError("model broke: out of memory in a convolution")
        return super().encode_batch(batch)


def test_a_model_error_in_a_replica_stops_the_run_with_its_message_and_keeps_earlier_batches(tmp_path, image_dir):
    items = _items(image_dir(40))
    cache = VectorCache(tmp_path / "c", "fake-grid4x4", 48)
    with pytest.raises(RuntimeError, match="model broke"):
        embed_items(BreaksOnThirdBatch(), items, cache, batch_size=4, workers=2, progress=False, executor="replicas")
    kept = [it.key for it in items if it.key in cache]
    assert len(kept) >= 4 and len(kept) % 4 == 0  # whole batches, in item order
    assert kept == [it.key for it in items[:len(kept)]]
    assert _no_replicas_left()


def test_replicas_are_the_default_for_lite0_on_few_cores_only(monkeypatch):
    monkeypatch.setattr(tuning, "available_cpus", lambda: 2)
    tiny = _tiny_torch()
    assert tuned_config(tiny).executor == "thread"  # a torch model that does not say it gains (ViT-B-32 did not)
    tiny.bulk_replicas = True  # as EfficientNet-Lite0 says
    cfg = tuned_config(tiny)
    assert (cfg.executor, cfg.workers, cfg.batch_size) == ("replicas", 2, 8)
    assert tuned_config(FakeEmbedder()).executor == "thread"  # not a torch model: unmeasured
    assert tuned_config(tiny, compile="on").executor == "thread"  # each replica would compile it again
    with pytest.raises(ConfigError, match="uncompiled"):
        tuned_config(tiny, executor="replicas", compile="on")
    monkeypatch.setattr(tuning, "available_cpus", lambda: 8)
    assert tuned_config(tiny).executor == "process"


def test_fused_replicas_after_a_two_thread_parent_match_the_eager_vectors(tmp_path, image_dir, monkeypatch):
    """The fused kernels are built for one thread before the replicas fork: kernels sized for the
    parent's two OpenMP threads hung a forked replica at its first barrier."""
    from shopsearch.embedders import onednn_fusion
    from shopsearch.embedding import replicas

    def always_fused(model, batch, rounds=3):  # kept whatever the timing says, so the test is about forking
        return onednn_fusion.fused(model, batch, batch.dtype, (batch.shape[0],))

    monkeypatch.setattr(onednn_fusion, "bulk_form", always_fused)
    monkeypatch.setattr(replicas, "FUSE_MIN_IMAGES", 1)
    items = _items(image_dir(21))
    emb = _tiny_torch()
    ref = VectorCache(tmp_path / "ref", emb.fingerprint, emb.dim)
    torch.set_num_threads(2)  # the parent's OpenMP team exists before the fork
    embed_items(emb, items, ref, batch_size=8, workers=2, progress=False, executor="thread")
    cache = VectorCache(tmp_path / "c", emb.fingerprint, emb.dim)
    rep = embed_items(emb, items, cache, batch_size=8, workers=2, progress=False, executor="replicas")
    assert rep.embedded == 21 and emb._fused is None  # unfused again after the run
    keys = [it.key for it in items]
    cos = np.sum(cache.get_many(keys) * ref.get_many(keys), axis=1)
    assert cos.min() >= 0.9999
    assert _no_replicas_left()
