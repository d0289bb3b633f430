"""Fine-tuning an image backbone jointly with the fine + coarse head, with augmentation,
a cosine schedule, label smoothing and early stopping on a validation split.

Runs on CPU (the tests take one tiny step) or CUDA (bf16 autocast, channels-last). The
same code runs on a remote GPU through `python -m indexer.finetune_main`."""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from shopsearch.classify.data import LabelledImage
from shopsearch.classify.ema import WeightAverage
from shopsearch.classify.finetune_config import FinetuneConfig, LrSchedule, planned_epochs
from shopsearch.classify.head import CategoryHead, combined_probs
from shopsearch.classify.labels import LabelSpace
from shopsearch.classify.train_precision import candidates, probe
from shopsearch.classify.transforms import CROP_PCT, eval_transform, train_transform

log = logging.getLogger("shopsearch.classify")


@dataclass
class FinetuneResult:
    backbone_state: dict[str, torch.Tensor]
    head: CategoryHead
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    val_fine_probs: np.ndarray | None = None
    val_coarse_probs: np.ndarray | None = None
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    weights: str = "raw"  # which weights were kept: "raw" or "averaged" (the EMA), whichever validated better


class _Images(torch.utils.data.Dataset):
    def __init__(self, items: Sequence[LabelledImage], labels: LabelSpace,
                 transform: Callable[[Image.Image], torch.Tensor], preload: bool = False) -> None:
        from shopsearch.images import load_image

        self.paths = [i.path for i in items]
        self.fine = [labels.fine_index(i.category) for i in items]
        self.coarse = [labels.fine_to_coarse[f] for f in self.fine]
        self.transform = transform
        self.images = [load_image(p) for p in self.paths] if preload else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        from shopsearch.images import load_image

        # EXIF-upright RGB; corrupt files raise clearly
        img = self.images[i] if self.images is not None else load_image(self.paths[i])
        return self.transform(img), self.fine[i], self.coarse[i]


def _loader(ds: torch.utils.data.Dataset, cfg: FinetuneConfig, train: bool, device: torch.device
            ) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(cfg.seed)
    return torch.utils.data.DataLoader(
        ds, batch_size=cfg.batch_size, shuffle=train, drop_last=train and len(ds) > cfg.batch_size,
        num_workers=cfg.workers, pin_memory=device.type == "cuda", persistent_workers=cfg.workers > 0,
        generator=g)


def _mix(x: torch.Tensor, yf: torch.Tensor, yc: torch.Tensor, g: torch.Generator
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """MixUp (alpha 0.2) or CutMix (alpha 1.0) with the batch reversed: (x, yf2, yc2, lam)."""
    use_cutmix = bool(torch.rand(1, generator=g) < 0.5)
    alpha = 1.0 if use_cutmix else 0.2
    lam = float(np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=g))).beta(alpha, alpha))
    idx = torch.arange(x.shape[0] - 1, -1, -1, device=x.device)
    if use_cutmix:
        h, w = x.shape[-2:]
        rh, rw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(torch.randint(0, h, (1,), generator=g)), int(torch.randint(0, w, (1,), generator=g))
        y0, y1, x0, x1 = max(cy - rh // 2, 0), min(cy + rh // 2, h), max(cx - rw // 2, 0), min(cx + rw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x[idx][..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = lam * x + (1 - lam) * x[idx]
    return x, yf[idx], yc[idx], lam


def _freeze(net: nn.Module, n_blocks: int) -> None:
    """Freeze the stem and the first n_blocks stages (their BatchNorm statistics too)."""
    if n_blocks <= 0:
        return
    frozen = [getattr(net, "conv_stem", None), getattr(net, "bn1", None)]
    frozen += list(getattr(net, "blocks", []))[:n_blocks]
    for m in frozen:
        if m is not None:
            m.requires_grad_(False)
            m.eval()


@torch.no_grad()
def predict(net: nn.Module, head: CategoryHead, loader: torch.utils.data.DataLoader, labels: LabelSpace,
            device: torch.device, autocast: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(fine probs, coarse probs, fine targets, coarse targets) over a loader."""
    net.eval()
    head.eval()
    f2c = torch.tensor(labels.fine_to_coarse, device=device)
    out: list[list[np.ndarray]] = [[], [], [], []]
    for x, yf, yc in loader:
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            feats = net(x)
        pf, pc = combined_probs(*head(feats.float()), f2c)
        for lst, t in zip(out, (pf, pc, yf, yc)):
            lst.append(t.cpu().numpy())
    return tuple(np.concatenate(o) for o in out)  # type: ignore[return-value]


def finetune(backbone: nn.Module, train: Sequence[LabelledImage], val: Sequence[LabelledImage],
             labels: LabelSpace, cfg: FinetuneConfig = FinetuneConfig(), device: str = "cpu",
             progress: bool = True) -> FinetuneResult:
    """Train backbone + head; keep the epoch, and of the raw and averaged (EMA) weights the
    version, with the best validation (fine, coarse) top-1."""
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    dev = torch.device(device)
    options = candidates(cfg.precision, dev)  # raises on an unknown name before any work
    net = backbone.to(dev).to(memory_format=torch.channels_last)
    dim = int(getattr(net, "num_features", 1280))
    head = CategoryHead(dim, len(labels.fine), len(labels.coarse), dropout=0.2).to(dev)
    train_dl = _loader(_Images(train, labels, train_transform(cfg.img_size, cfg.min_scale, cfg.augment),
                               preload=cfg.preload), cfg, True, dev)
    val_dl = _loader(_Images(val, labels, eval_transform(cfg.img_size)), cfg, False, dev) if val else None
    _freeze(net, cfg.frozen_blocks)
    params = [{"params": [p for p in net.parameters() if p.requires_grad], "lr": cfg.lr_backbone},
              {"params": list(head.parameters()), "lr": cfg.lr_head}]
    opt = torch.optim.AdamW(params, weight_decay=cfg.weight_decay)
    plan = [cfg.epochs]  # epochs in all; a time budget re-plans it after each epoch

    def total_steps() -> int:
        total = plan[0] * len(train_dl)
        return total if cfg.max_steps is None else min(total, cfg.max_steps)

    warmup = min(total_steps() // 2, int(cfg.warmup_epochs * len(train_dl)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, LrSchedule(warmup, total_steps))
    mix_gen = torch.Generator().manual_seed(cfg.seed + 1)
    ema = WeightAverage(nn.ModuleDict({"net": net, "head": head}), cfg.ema_decay) if cfg.ema_decay > 0 else None
    use_amp, probe_s = options == ("bf16",), {}
    best: tuple[float, float] = (-1.0, -1.0)
    best_state: dict[str, Any] = {}
    best_epoch, best_weights, stale, step = 0, "raw", 0, 0
    history: list[dict[str, float]] = []
    t_loop, epoch = time.perf_counter(), 0
    while epoch < plan[0]:
        epoch += 1
        net.train()
        head.train()
        _freeze(net, cfg.frozen_blocks)  # keep frozen BatchNorm layers in eval mode
        losses = []
        for x, yf, yc in tqdm(train_dl, desc=f"epoch {epoch}/{plan[0]}", unit="batch",
                              disable=not progress, leave=False):
            x = x.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
            yf, yc = yf.to(dev, non_blocking=True), yc.to(dev, non_blocking=True)
            if len(options) > 1 and not probe_s:  # time fp32 against bf16 on the first batch, on copies
                precision, probe_s = probe(net, head, x, lambda lf, lc: F.cross_entropy(lf, yf) + F.cross_entropy(lc, yc),
                                           options)
                use_amp = precision == "bf16"
            lam, yf2, yc2 = 1.0, yf, yc
            if cfg.mix_prob > 0 and bool(torch.rand(1, generator=mix_gen) < cfg.mix_prob):
                x, yf2, yc2, lam = _mix(x, yf, yc, mix_gen)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
                feats = net(x)
            lf, lc = head(feats.float())
            loss = torch.zeros((), device=dev)
            for w, a, b in ((lam, yf, yc), (1 - lam, yf2, yc2)):
                if w > 0:
                    loss = loss + w * (F.cross_entropy(lf, a, label_smoothing=cfg.label_smoothing)
                                       + cfg.coarse_weight * F.cross_entropy(lc, b, label_smoothing=cfg.label_smoothing))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update(nn.ModuleDict({"net": net, "head": head}))
            losses.append(float(loss.detach()))
            step += 1
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break
        row: dict[str, float] = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                                 "lr_backbone": float(opt.param_groups[0]["lr"])}
        versions = {"raw": (net, head)}
        if ema is not None:
            versions["averaged"] = (ema.module["net"], ema.module["head"])
        scores = {}
        for kind, (v_net, v_head) in versions.items():
            scores[kind] = (0.0, 0.0)
            if val_dl is not None:
                pf, pc, yf_np, yc_np = predict(v_net, v_head, val_dl, labels, dev, use_amp)
                prefix = "val" if kind == "raw" else "ema_val"
                row[f"{prefix}_fine_top1"] = float((pf.argmax(1) == yf_np).mean())
                row[f"{prefix}_coarse_top1"] = float((pc.argmax(1) == yc_np).mean())
                scores[kind] = (row[f"{prefix}_fine_top1"], row[f"{prefix}_coarse_top1"])
        row["seconds"] = now = time.perf_counter() - t_start
        # the budget counts from the start; epochs are timed from the loop (data set-up is paid once)
        plan[0] = planned_epochs(cfg.epochs, epoch, now, (time.perf_counter() - t_loop) / epoch, cfg.minutes)
        row["planned_epochs"] = plan[0]
        kind = max(scores, key=lambda k: scores[k])  # ties keep the raw weights
        score, (e_net, e_head) = scores[kind], versions[kind]
        history.append(row)
        log.info("finetune epoch", extra=row)
        if progress:  # a single-level taxonomy has no coarse level to show
            shown = {k: v for k, v in row.items() if "coarse" not in k or len(labels.coarse) != len(labels.fine)}
            tqdm.write(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))
        if score >= best or val_dl is None:
            best, best_epoch, best_weights, stale = score, epoch, kind, 0
            best_state = {"net": copy.deepcopy(e_net.state_dict()), "head": copy.deepcopy(e_head.state_dict())}
        else:
            stale += 1
            if stale >= cfg.patience:
                break
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
    net.load_state_dict(best_state["net"])
    head.load_state_dict(best_state["head"])
    vf = vc = None
    if val_dl is not None:
        vf, vc, _, _ = predict(net, head, val_dl, labels, dev, use_amp)
    head = head.cpu().eval()
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    return FinetuneResult(state, head, best_epoch, history, vf, vc, time.perf_counter() - t_start,
                          {**asdict(cfg), "planned_epochs": plan[0], "crop_pct": CROP_PCT, "device": str(dev),
                           "autocast": "bf16" if use_amp else "fp32", "precision_probe_s": probe_s}, best_weights)
