"""The fine-tune's weight average: warmed-up decay, raw-vs-averaged choice, the frozen-head warning."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from shopsearch.classify.ema import WeightAverage, warmed_decay
from shopsearch.classify.finetune import finetune
from shopsearch.classify.finetune_config import FinetuneConfig
from shopsearch.classify.labels import LabelSpace
from shopsearch.classify.training import below_reference

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny training steps (tests/conftest.py)


def test_decay_warms_up_then_caps():
    assert warmed_decay(0.998, 0) == pytest.approx(0.1)
    assert warmed_decay(0.998, 90) == pytest.approx(0.91)
    assert warmed_decay(0.998, 100_000) == 0.998


def test_average_follows_the_weights_in_a_short_run():
    """With a fixed 0.998 decay, 100 steps leave ~82% of the first weights in the average
    (the bug); the warmed-up average is close to where the weights went."""
    model = nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.zero_()
    avg = WeightAverage(model, 0.998)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(100):
        avg.update(model)
    assert float(avg.module.weight.mean()) > 0.85
    fixed = 1 - 0.998 ** 100
    assert fixed < 0.2  # what the old average would hold of the new weights


def test_average_copies_integer_buffers():
    model = nn.BatchNorm1d(3)
    avg = WeightAverage(model, 0.9)
    model.train()
    model(torch.randn(8, 3))
    avg.update(model)
    assert int(avg.module.num_batches_tracked) == 1
    assert not torch.equal(avg.module.running_mean, torch.zeros(3))


@pytest.fixture(scope="module")
def tiny_items(tiny_labelled_items):
    return tiny_labelled_items


def test_finetune_keeps_the_better_of_raw_and_averaged(tiny_items):
    labels = LabelSpace.from_paths(i.category for i in tiny_items)
    cfg = FinetuneConfig(epochs=2, batch_size=6, img_size=32, mix_prob=0.0, ema_decay=0.999, frozen_blocks=5,
                         lr_head=3e-2, warmup_epochs=0.0)
    res = finetune(__import__("shopsearch.embedders.finetuned", fromlist=["x"]).imagenet_backbone(None),
                   tiny_items, tiny_items, labels, cfg, progress=False)
    assert res.weights in ("raw", "averaged")
    row = res.history[res.best_epoch - 1]
    assert "val_fine_top1" in row and "ema_val_fine_top1" in row
    key = "val_fine_top1" if res.weights == "raw" else "ema_val_fine_top1"
    other = "ema_val_fine_top1" if res.weights == "raw" else "val_fine_top1"
    assert row[key] >= row[other]
    # the saved weights are the ones scored: their validation accuracy is the kept row's
    y = [labels.fine_index(i.category) for i in tiny_items]
    assert float((res.val_fine_probs.argmax(1) == torch.tensor(y).numpy()).mean()) == pytest.approx(row[key])


def test_warning_when_far_below_the_frozen_head():
    assert below_reference(0.52, 0.84) and "frozen head" in below_reference(0.52, 0.84)[0]
    assert below_reference(0.82, 0.84) == []
    assert below_reference(0.30, None) == []
