"""Shared driver of the example training scripts for the built-in architectures.

Trains ``pacbound.models.BUILTINS[arch]`` on the bundled MNIST with a seeded shuffle, a
cosine learning-rate schedule and SGD (momentum 0.9) or AdamW, and saves the weights at
initialization (before any data is seen: the centre of a data-independent prior) and after
training as safetensors state dicts, with a ``training.json`` summary.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from pacbound.io import load_dataset, resolve_device
from pacbound.models import BUILTINS

HERE = Path(__file__).resolve().parent


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    optimizer: str,
    weight_decay: float,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> None:
    """Cross-entropy training; the learning rate decays from ``lr`` to 0 on a cosine over all
    steps; the shuffling is seeded. Leaves the model in eval mode."""
    model.to(device).train()
    params = list(model.parameters())
    opt: torch.optim.Optimizer = (
        torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
        if optimizer == "sgd"
        else torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    )
    steps = epochs * math.ceil(x.shape[0] / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / steps))
    )
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        for start in range(0, x.shape[0], batch_size):
            idx = perm[start : start + batch_size]
            loss = nn.functional.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
    model.eval()


@torch.no_grad()
def error_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    """The 0-1 error of ``model`` (in eval mode) on ``x, y``."""
    wrong = 0
    for start in range(0, x.shape[0], 1024):
        out = model(x[start : start + 1024].to(device))
        wrong += int((out.argmax(1).cpu() != y[start : start + 1024]).sum())
    return wrong / x.shape[0]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def parser(description: str, *, epochs: int, lr: float, optimizer: str) -> argparse.ArgumentParser:
    """The scripts' common options, with each architecture's training defaults."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", default=str(HERE / "data" / "mnist"))
    p.add_argument("--out", required=True, help="folder for init/final weights")
    p.add_argument("--arch-kwargs", default="{}", help="JSON keyword arguments of the factory")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default=optimizer)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--n", type=int, default=None, help="train on the first N examples only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None)
    return p


def main(arch: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train ``arch`` as ``args`` says; save init/final weights and the summary; return it."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    train_set = load_dataset(args.data, split="train")
    test_set = load_dataset(args.data, split="test")
    x, y = train_set.x, train_set.y
    if args.n is not None:
        x, y = x[: args.n], y[: args.n]
    kwargs = json.loads(args.arch_kwargs)
    torch.manual_seed(args.seed)
    model = BUILTINS[arch].factory(**kwargs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(_state(model), out / "init.safetensors")
    start = time.perf_counter()
    fit(
        model,
        x,
        y,
        epochs=args.epochs,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        seed=args.seed,
        device=device,
    )
    seconds = time.perf_counter() - start
    save_file(_state(model), out / "final.safetensors")
    summary = {
        "arch": arch,
        "arch_kwargs": kwargs,
        "parameters": sum(p.numel() for p in model.parameters()),
        "n_train": int(x.shape[0]),
        "options": {k: v for k, v in vars(args).items() if k not in ("data", "out")},
        "train_error": error_rate(model, x, y, device),
        "test_error": error_rate(model, test_set.x, test_set.y, device),
        "train_seconds": seconds,
        "init": str(out / "init.safetensors"),
        "final": str(out / "final.safetensors"),
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return summary
