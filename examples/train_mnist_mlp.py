"""Train a small MLP on the bundled MNIST and save its initial and final weights.

The initial weights are saved *before* training, so they can centre a PAC-Bayes prior that
is independent of the data. Both files are safetensors state dicts of ``pacbound.models.mlp``.

    python examples/train_mnist_mlp.py --out runs/mnist --hidden 600 --epochs 3
    python examples/train_mnist_mlp.py --out runs/t600 --binary --epochs 5   # 0-4 vs 5-9
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from pacbound.io import load_dataset, resolve_device
from pacbound.models import mlp

HERE = Path(__file__).resolve().parent
BINARY_LABEL_MAP = "0-4:0,5-9:1"


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    momentum: float,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> None:
    """Plain SGD with momentum on the cross-entropy; seeded shuffling."""
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        for start in range(0, x.shape[0], batch_size):
            idx = perm[start : start + batch_size]
            loss = nn.functional.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()


@torch.no_grad()
def error_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    wrong = 0
    for start in range(0, x.shape[0], 4096):
        out = model(x[start : start + 4096].to(device))
        wrong += int((out.argmax(1).cpu() != y[start : start + 4096]).sum())
    return wrong / x.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE / "data" / "mnist"))
    parser.add_argument("--out", default="runs/mnist", help="folder for init/final weights")
    parser.add_argument("--hidden", type=int, nargs="*", default=[600])
    parser.add_argument("--binary", action="store_true", help="digits 0-4 vs 5-9")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    device = resolve_device(args.device)
    label_map = BINARY_LABEL_MAP if args.binary else None
    train_set = load_dataset(args.data, split="train", label_map=label_map)
    test_set = load_dataset(args.data, split="test", label_map=label_map)
    num_classes = 2 if args.binary else 10
    torch.manual_seed(args.seed)
    model = mlp(hidden=args.hidden, num_classes=num_classes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "init.safetensors")
    start = time.perf_counter()
    train(
        model,
        train_set.x,
        train_set.y,
        epochs=args.epochs,
        lr=args.lr,
        momentum=args.momentum,
        batch_size=args.batch_size,
        seed=args.seed,
        device=device,
    )
    seconds = time.perf_counter() - start
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, out / "final.safetensors")
    summary = {
        "arch": "mlp",
        "arch_kwargs": {"hidden": args.hidden, "num_classes": num_classes},
        "label_map": label_map,
        "train_error": error_rate(model, train_set.x, train_set.y, device),
        "test_error": error_rate(model, test_set.x, test_set.y, device),
        "train_seconds": seconds,
        "init": str(out / "init.safetensors"),
        "final": str(out / "final.safetensors"),
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
