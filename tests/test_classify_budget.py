"""The fine-tune's time budget: epochs planned from the measured epoch time, the schedule following."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from indexer.cli import cli
from shopsearch.classify import finetune as ft
from shopsearch.classify.finetune_config import CPU_RECIPE, FinetuneConfig, planned_epochs, recipe_for
from shopsearch.classify.labels import LabelSpace
from shopsearch.embedders.finetuned import imagenet_backbone
from shopsearch.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny training steps (tests/conftest.py)


def test_planned_epochs():
    assert planned_epochs(12, 1, 100.0, 100.0, None) == 12  # no budget: the cap
    assert planned_epochs(20, 1, 150.0, 120.0, 25.0) == 1 + (1500 - 150) // 120  # 11 more fit
    assert planned_epochs(5, 1, 150.0, 120.0, 25.0) == 5  # the cap still holds
    assert planned_epochs(20, 3, 2000.0, 600.0, 25.0) == 3  # over budget: stop, never below what ran
    assert planned_epochs(20, 2, 1000.0, 480.0, 25.0) == 3  # 500 s left: one more


def test_cpu_recipe_is_budgeted_and_the_gpu_one_is_not():
    assert recipe_for("cpu").minutes == CPU_RECIPE["minutes"] <= 25
    assert recipe_for("cuda").minutes is None
    assert recipe_for("cpu", minutes=5.0).minutes == 5.0
    for bad in (0.0, -3.0, float("nan")):  # a clear error, not a silent one-epoch run
        with pytest.raises(ConfigError, match="positive number of minutes"):
            recipe_for("cpu", minutes=bad)


def test_loader_workers_follow_the_device(monkeypatch):
    import os

    from shopsearch.classify import finetune_config

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert finetune_config.loader_workers("cpu") == 2  # loading is a few % of a CPU step
    assert finetune_config.loader_workers("cuda") == 15  # a GPU outruns a few loaders
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert finetune_config.loader_workers("cuda:0") == 16
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert finetune_config.loader_workers("cuda") == 2
    assert recipe_for("cuda", workers=None).workers == 2
    assert recipe_for("cuda", workers=5).workers == 5  # asked for: kept
    assert recipe_for("cpu", workers=None).workers == 2
    assert recipe_for("cuda").workers == FinetuneConfig().workers  # not asked for at all: the dataclass's


def test_the_cli_refuses_a_budget_that_is_not_positive(tmp_path):
    res = CliRunner().invoke(cli, ["--data-dir", str(tmp_path), "classify", "train", "--finetune", "--minutes", "0"])
    assert res.exit_code == 2 and "Invalid value for '--minutes'" in res.output and "x>0" in res.output
    assert "Traceback" not in res.output


@pytest.fixture(scope="module")
def tiny(tiny_labelled_items):
    return tiny_labelled_items, LabelSpace.from_paths(i.category for i in tiny_labelled_items)


def _cfg(**kw) -> FinetuneConfig:
    return FinetuneConfig(**{"batch_size": 6, "img_size": 32, "mix_prob": 0.0, "ema_decay": 0.0, "frozen_blocks": 5,
                             "warmup_epochs": 0.0, "patience": 99, **kw})


def test_a_spent_budget_stops_after_the_first_epoch(tiny):
    items, labels = tiny
    res = ft.finetune(imagenet_backbone(None), items, items, labels, _cfg(epochs=4, minutes=1e-6), progress=False)
    assert len(res.history) == 1 and res.history[0]["planned_epochs"] == 1
    assert res.config["planned_epochs"] == 1 and res.config["minutes"] == 1e-6


def test_the_schedule_ends_where_the_plan_ends(tiny, monkeypatch):
    """Re-planned from 4 epochs to 2 after the first: the cosine reaches 0 at the end of the second
    (without the re-plan it would be half-way, at 0.5 of the peak)."""
    items, labels = tiny
    monkeypatch.setattr(ft, "planned_epochs", lambda cap, done, *a: 2)
    res = ft.finetune(imagenet_backbone(None), items, items, labels, _cfg(epochs=4, minutes=10.0), progress=False)
    assert [r["planned_epochs"] for r in res.history] == [2, 2]
    assert res.history[-1]["lr_backbone"] == pytest.approx(0.0, abs=1e-9)
    monkeypatch.undo()
    res = ft.finetune(imagenet_backbone(None), items, items, labels, _cfg(epochs=4), progress=False)
    assert len(res.history) == 4  # no budget: the planned 4, half-way down the cosine after the second
    assert res.history[1]["lr_backbone"] == pytest.approx(0.5 * res.config["lr_backbone"], rel=1e-6)


def test_the_learning_rate_never_rises_after_the_warm_up_when_the_plan_grows():
    """A time budget re-plans the epochs after each one; a plan that grows (the first epoch is
    the slowest) used to step the cosine back up mid-run."""
    from shopsearch.classify.finetune_config import LrSchedule

    plan = [10]
    steps_per_epoch = 10
    sched = LrSchedule(warmup=5, total=lambda: plan[0] * steps_per_epoch)
    factors = []
    for step in range(150):
        if step == 30:
            plan[0] = 15  # after epoch 3 the run finds room for 5 more epochs
        factors.append(sched(step))
    assert factors[:5] == [0.2, 0.4, 0.6, 0.8, 1.0]  # the warm-up rises
    after = factors[5:]
    assert all(b <= a for a, b in zip(after, after[1:]))  # then never rises again
    assert factors[30] == factors[29] and 0.0 < factors[100] < factors[29] and after[-1] < 1e-3  # held, then down
    fixed = LrSchedule(warmup=5, total=lambda: 105)  # a fixed plan: the plain cosine
    assert [round(fixed(s), 6) for s in (5, 55, 105)] == [1.0, 0.5, 0.0]
