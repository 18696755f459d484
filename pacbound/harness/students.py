"""The small seeded models the coverage experiments train (no global RNG touched)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pacbound.harness.coverage import derive_seed
from pacbound.harness.synthetic import TeacherTask


def student(task: TeacherTask, hidden: int, seed: int) -> nn.Sequential:
    """A fresh, seeded ``d → hidden → K`` ReLU MLP (no global RNG touched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(task.dim, hidden), nn.ReLU(), nn.Linear(hidden, task.num_classes)
        )


def train(model: nn.Module, x: Tensor, y: Tensor, *, steps: int, lr: float) -> nn.Module:
    """Full-batch Adam on the cross-entropy, in place (deterministic on CPU)."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def model_state(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of the model's state dict (an ``init_state`` for the pipelines)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def pretrained(task: TeacherTask, hidden: int, n: int, seed: int) -> nn.Module:
    """A model trained on its own fresh sample: a prior mean fixed independently of S."""
    gen = torch.Generator().manual_seed(derive_seed("pretrain", seed))
    x, y = task.sample(n, gen)
    return train(
        student(task, hidden, derive_seed("pretrain-init", seed)), x, y, steps=200, lr=0.03
    )
