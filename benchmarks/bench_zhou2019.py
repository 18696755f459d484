"""Zhou et al. (2019) on MNIST: LeNet-5 trained by SGD, pruned, quantized post hoc, Occam-bounded.

Run: ``.venv/bin/python benchmarks/bench_zhou2019.py [--data examples/data/mnist]``. Prints one
JSON object: the bound (published: about 46%), the code length and its breakdown, the decoded
model's training and test error, the sparsity and levels, every candidate, wall time, peak
resident memory and the load average.

Recipe (fixed for all runs): ``lenet5()`` initialised by ``seeded_factory`` with seed 0; SGD
(momentum 0.9, lr 0.05, batch 128) for ``EPOCHS`` epochs on the training set; then for each
sparsity of ``SPARSITIES`` in turn: global magnitude pruning of all parameters to that
fraction of zeros and ``FINETUNE_EPOCHS`` of masked fine-tuning, then post-hoc k-means
quantization with an exact zero level (``certify_quantized``, levels ``LEVELS``), adaptive
arithmetic coding, exact binomial-tail Occam bound, δ = 0.05. Every pruned model is a
different message of the same prefix-free code, so reporting the best is paid by Kraft.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pacbound.certify.factories import seeded_factory
from pacbound.certify.method import Certificate
from pacbound.certify.occam import decoder_for
from pacbound.certify.occam_options import CompressionOptions
from pacbound.certify.quantize import certify_quantized
from pacbound.compressors import CompressedMessage
from pacbound.io.datasets import load_dataset
from pacbound.models import lenet5
from pacbound.posterior.risk import count_errors

PUBLISHED_BOUND = 0.46
EPOCHS = 2
FINETUNE_EPOCHS = 1
SPARSITIES = (0.9, 0.97)
OPTIONS = CompressionOptions(
    method="quantize",  # type: ignore[arg-type]
    levels=(4, 8, 16),
    codebook="kmeans",  # type: ignore[arg-type]
    precision="float16",  # type: ignore[arg-type]
    zero_level=True,
    qat_steps=0,
    delta=0.05,
)


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def _sgd(
    model: nn.Module, x: Tensor, y: Tensor, *, epochs: int, seed: int, masks: list[Tensor] | None
) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        for start in range(0, x.shape[0], 128):
            idx = order[start : start + 128]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            if masks is not None:
                with torch.no_grad():
                    for p, m in zip(model.parameters(), masks, strict=True):
                        p.mul_(m)
    model.eval()


def _prune_masks(model: nn.Module, sparsity: float) -> list[Tensor]:
    flat = torch.cat([p.detach().abs().reshape(-1) for p in model.parameters()])
    keep = flat.numel() - int(sparsity * flat.numel())
    threshold = flat.topk(keep).values.min()
    masks = [(p.detach().abs() >= threshold).float() for p in model.parameters()]
    with torch.no_grad():
        for p, m in zip(model.parameters(), masks, strict=True):
            p.mul_(m)
    return masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="examples/data/mnist")
    args = parser.parse_args()
    start, load_start = time.perf_counter(), os.getloadavg()
    train = load_dataset(args.data, split="train")
    test = load_dataset(args.data, split="test")
    factory = seeded_factory(lenet5)
    model = factory(0)
    _sgd(model, train.x, train.y, epochs=EPOCHS, seed=1, masks=None)
    dense_test = count_errors(model, test.x, test.y).rate
    runs: list[tuple[float, Certificate]] = []
    for i, sparsity in enumerate(SPARSITIES):
        masks = _prune_masks(model, sparsity)
        _sgd(model, train.x, train.y, epochs=FINETUNE_EPOCHS, seed=2 + i, masks=masks)
        cert = certify_quantized(
            model, factory, train.x, train.y, num_classes=train.num_classes, options=OPTIONS
        )
        runs.append((sparsity, cert))
    sparsity, best = min(runs, key=lambda run: run[1].value)
    message, res = CompressedMessage.from_bytes(best.hypothesis), best.results
    decoded = decoder_for(message, factory).decompress(best.hypothesis)
    test_count = count_errors(decoded, test.x, test.y)
    zeros = sum(int((p == 0).sum()) for p in decoded.parameters())
    out = {
        "benchmark": "zhou2019-mnist-lenet5-prune-quantize",
        "published_bound": PUBLISHED_BOUND,
        "bound": best.value,
        "code_length_bits": res["code_length_bits"],
        "code_length_breakdown": res["code_length_breakdown"],
        "train_errors": res["errors"],
        "train_error": res["errors"] / res["n"],
        "n": res["n"],
        "test_error": test_count.rate,
        "test_n": test_count.evaluations,
        "dense_sgd_test_error": dense_test,
        "levels": message.codebook.levels,
        "num_parameters": message.num_parameters,
        "sparsity": sparsity,
        "decoded_zero_fraction": zeros / message.num_parameters,
        "delta": OPTIONS.delta,
        "candidates": [{"sparsity": s, **c} for s, cert in runs for c in cert.results["search"]],
        "recipe": {
            "epochs": EPOCHS,
            "finetune_epochs": FINETUNE_EPOCHS,
            "sparsities": list(SPARSITIES),
            "sgd": {"lr": 0.05, "momentum": 0.9, "batch_size": 128},
            "options": OPTIONS.to_dict(),
        },
        "certificate": dict(res),
        "wall_time_s": time.perf_counter() - start,
        "peak_rss_gib": _peak_rss_bytes() / 2**30,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(out, indent=2, allow_nan=False))


if __name__ == "__main__":
    main()
