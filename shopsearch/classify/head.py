"""The classifier head: two linear (or small-MLP) outputs, fine and coarse, over the
L2-normalised embedding times a learned scale. It normalises its input itself, so the
same weights apply to a backbone's raw pooled features (fine-tuning) and to the unit
vectors an Embedder returns (search routing, tagging)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class CategoryHead(nn.Module):
    def __init__(self, dim: int, n_fine: int, n_coarse: int, hidden: int = 0, scale: float = 16.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.config = {"dim": dim, "n_fine": n_fine, "n_coarse": n_coarse, "hidden": hidden,
                       "scale": scale, "dropout": dropout}
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))
        self.body: nn.Module = nn.Identity() if hidden <= 0 else nn.Sequential(nn.Linear(dim, hidden), nn.GELU())
        width = hidden if hidden > 0 else dim
        self.drop = nn.Dropout(dropout)
        self.fine = nn.Linear(width, n_fine)
        self.coarse = nn.Linear(width, n_coarse)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.normalize(x.float(), dim=-1) * self.log_scale.exp()
        x = self.drop(self.body(x))
        return self.fine(x), self.coarse(x)

    @classmethod
    def from_state(cls, config: dict[str, Any], state: dict[str, torch.Tensor]) -> "CategoryHead":
        head = cls(**config)
        head.load_state_dict({k: v.float() for k, v in state.items()})
        return head.eval()


def combined_probs(fine_logits: torch.Tensor, coarse_logits: torch.Tensor, fine_to_coarse: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(fine probs, coarse probs); the coarse probs average the coarse head with the fine
    head's mass summed per coarse class (two views of the same level, both trained)."""
    pf = fine_logits.float().softmax(-1)
    pc = coarse_logits.float().softmax(-1)
    from_fine = torch.zeros_like(pc).index_add_(1, fine_to_coarse, pf)
    return pf, 0.5 * (pc + from_fine)


def train_head(x: np.ndarray, y_fine: np.ndarray, y_coarse: np.ndarray, n_fine: int, n_coarse: int,
               hidden: int = 0, epochs: int = 300, lr: float = 1e-2, weight_decay: float = 1e-4,
               label_smoothing: float = 0.1, coarse_weight: float = 0.5, seed: int = 0,
               batch_size: int = 1024) -> CategoryHead:
    """Fit a head on frozen embeddings (CPU, seconds): AdamW, cosine schedule, mini-batches."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = CategoryHead(x.shape[1], n_fine, n_coarse, hidden=hidden, dropout=0.1 if hidden else 0.0)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yf = torch.from_numpy(np.asarray(y_fine, dtype=np.int64))
    yc = torch.from_numpy(np.asarray(y_coarse, dtype=np.int64))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, math.ceil(len(xt) / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    head.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for start in range(0, len(xt), batch_size):
            idx = perm[start:start + batch_size]
            lf, lc = head(xt[idx])
            loss = F.cross_entropy(lf, yf[idx], label_smoothing=label_smoothing)
            loss = loss + coarse_weight * F.cross_entropy(lc, yc[idx], label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return head.eval()
