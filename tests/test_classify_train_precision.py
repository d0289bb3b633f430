"""Fine-tuning's forward/backward precision: what "auto" may choose where, and the probe
that chooses (a tiny model, random inputs)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shopsearch.classify import train_precision as tp
from shopsearch.classify.finetune_config import CPU_RECIPE, FinetuneConfig, recipe_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny training steps (tests/conftest.py)


def test_auto_times_bf16_only_on_cpus_that_run_it_natively(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(tp, "cpu_has_bf16", lambda: False)
    assert tp.candidates("auto", cpu) == ("fp32",)  # AVX2-only: no probe, no emulated bf16
    monkeypatch.setattr(tp, "cpu_has_bf16", lambda: True)
    assert tp.candidates("auto", cpu) == ("fp32", "bf16")
    assert tp.candidates("auto", cuda) == ("bf16",)  # the GPU recipe as before
    assert tp.candidates("fp32", cpu) == ("fp32",) and tp.candidates("bf16", cpu) == ("bf16",)
    with pytest.raises(ValueError, match="precision"):
        tp.candidates("fp16", cpu)


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)).mean((2, 3))


class _Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fine, self.coarse = nn.Linear(8, 3), nn.Linear(8, 2)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fine(f), self.coarse(f)


def test_probe_leaves_the_model_untouched_and_keeps_the_faster(monkeypatch):
    torch.manual_seed(0)
    net, head = _Tiny().train(), _Head().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, yf, yc = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 1, 0])

    def loss(lf, lc):
        return F.cross_entropy(lf, yf) + F.cross_entropy(lc, yc)

    assert tp.probe(net, head, x, loss, ("fp32",)) == ("fp32", {})  # one option: nothing timed
    # a fake clock: bf16 steps take 1 s, fp32 steps 2 s -> bf16; then within the margin -> fp32
    for fp32_s, want in ((2.0, "bf16"), (1.05, "fp32")):
        fake = {"fp32": fp32_s, "bf16": 1.0}
        monkeypatch.setattr(tp, "_step_seconds", lambda precision, step, fake=fake: (step(), fake[precision])[1])
        chosen, secs = tp.probe(net, head, x, loss, ("fp32", "bf16"))
        assert chosen == want and secs == {"fp32": fp32_s, "bf16": 1.0}
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics
    assert all(p.grad is None for p in net.parameters())


def test_cpu_recipe_runs_auto_precision_and_the_gpu_recipe_is_unchanged():
    cpu = recipe_for("cpu")
    assert cpu.precision == "auto" and cpu.epochs == CPU_RECIPE["epochs"] and cpu.img_size == 224
    assert recipe_for("cpu", precision="fp32").precision == "fp32"
    gpu = recipe_for("cuda")
    assert gpu == FinetuneConfig() and gpu.epochs == 50 and gpu.img_size == 288
