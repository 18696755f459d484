"""BatchNorm certified without folding vs folded by hand (issue #13, MATH.md §10).

    python benchmarks/bench_batchnorm_folding.py                  # 4000 images, 1 epoch
    python benchmarks/bench_batchnorm_folding.py --n 10000 --channels 32 64 --hidden 128

A small BatchNorm CNN (``pacbound.models.convnet`` with ``batch_norm=true``) is trained with
seeded SGD (BatchNorm in train mode) for ``--epochs`` on the first ``--n`` MNIST training
images, its init weights kept (with ``--from-prior``, as in the paper pipeline of
``_mnist_gaussian.py``, starting from the BN data prior trained on S_prior by certify's own
split and recipe). Then, on the same data with the same seeds and options
(``--prior data``, posterior ``--posterior``):

* **unfolded**: ``certify_gaussian`` on the checkpoint as it is: each eval-mode BatchNorm
  becomes its per-channel affine (a, c) covered by the posterior; the prior mean is the
  BatchNorm network trained on S_prior only (from the init weights) in the same form;
* **folded by hand** (what a user had to do before): every (Conv2d, BatchNorm2d) pair of
  the checkpoint and of the init weights folded into one Conv2d (W' = a·W, b' = a·b + c);
  the folded network certified with its data prior trained on S_prior from the folded init.

Prints one JSON object (both certificates, their difference, the checkpoint's test error,
seconds) and writes it to ``benchmarks/results/batchnorm_folding_n<N>_<posterior>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from train_mnist_mlp import error_rate, train  # noqa: E402

from pacbound.certify.gaussian import certify_gaussian  # noqa: E402
from pacbound.certify.gaussian_options import GaussianOptions  # noqa: E402
from pacbound.certify.gaussian_prior import data_dependent_prior  # noqa: E402
from pacbound.io import load_dataset, resolve_device  # noqa: E402
from pacbound.models import convnet  # noqa: E402
from pacbound.posterior.fit import TrainingRecipe  # noqa: E402
from pacbound.posterior.network import Sampler  # noqa: E402
from pacbound.posterior.normalization import affine_values, to_channel_affine  # noqa: E402
from pacbound.posterior.priors import PriorMean, PriorTrainingRecipe  # noqa: E402
from pacbound.posterior.samplers import unsupported_modules  # noqa: E402

DATA = ROOT / "examples" / "data" / "mnist"


def fold(model: nn.Sequential) -> nn.Sequential:
    """``model`` (eval mode) with every BatchNorm2d folded into the Conv2d before it."""
    layers: list[nn.Module] = []
    for module in model:
        if isinstance(module, nn.BatchNorm2d):
            conv = layers[-1]
            assert isinstance(conv, nn.Conv2d) and conv.bias is not None
            assert module.running_mean is not None and module.running_var is not None
            a, c = affine_values(
                module.weight, module.bias, module.running_mean, module.running_var, module.eps
            )
            folded = nn.Conv2d(
                conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding
            )
            with torch.no_grad():
                folded.weight.copy_(conv.weight * a.view(-1, 1, 1, 1))
                folded.bias.copy_(a * conv.bias + c)
            layers[-1] = folded
        else:
            layers.append(module)
    return nn.Sequential(*layers).eval()


def _sampler(model: nn.Module) -> Sampler:
    """``--sampler auto``'s rule: the layer samplers when they cover every module."""
    return Sampler.FUNCTIONAL if unsupported_modules(to_channel_affine(model)) else Sampler.LAYERS


def _certify(
    model: nn.Module,
    init: dict[str, torch.Tensor],
    data: tuple[torch.Tensor, torch.Tensor],
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    sampler = _sampler(model)
    options = GaussianOptions(
        prior=PriorMean.DATA,
        posterior=args.posterior,
        prior_recipe=PriorTrainingRecipe(
            epochs=args.prior_epochs, lr=args.prior_lr, seed=args.seed
        ),
        training=TrainingRecipe(epochs=args.posterior_epochs, p_min=0.5, seed=args.seed),
        mc_passes=args.mc_passes,
        seed=args.seed,
        sampler=sampler,
    )
    start = time.perf_counter()
    cert = certify_gaussian(
        model, data[0], data[1], options=options, init_state=init, device=device
    )
    return {
        "bound": cert.value,
        "kl_nats": cert.kl_nats,
        "n_bound": cert.n_bound,
        "mc_empirical_risk_estimate": cert.empirical_risk_estimate,
        "mc_empirical_risk_upper_bound": cert.monte_carlo.value,
        "prior_error": cert.prior.get("error"),
        "num_parameters": cert.network.num_parameters(),
        "sampler": sampler.value,
        "normalization": cert.posterior.get("normalization"),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--channels", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--posterior", default="isotropic")
    parser.add_argument("--posterior-epochs", type=int, default=2)
    parser.add_argument("--prior-epochs", type=int, default=10)
    parser.add_argument("--prior-lr", type=float, default=0.05)
    parser.add_argument("--mc-passes", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--from-prior",
        action="store_true",
        help="start the checkpoint's training at the BN data prior (the paper pipeline)",
    )
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)
    train_set = load_dataset(DATA, split="train")
    test_set = load_dataset(DATA, split="test")
    x, y = train_set.x[: args.n], train_set.y[: args.n]
    torch.manual_seed(args.seed)
    model = convnet(channels=args.channels, hidden=args.hidden, batch_norm=True)
    init_model = convnet(channels=args.channels, hidden=args.hidden, batch_norm=True)
    init_model.load_state_dict(model.state_dict())
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start = time.perf_counter()
    if args.from_prior:
        # the paper pipeline: the checkpoint is the data prior (certify's own seeded split,
        # recipe and init) fine-tuned on all of S
        _, prior_model = data_dependent_prior(
            model, x, y, prior_fraction=0.5,
            recipe=PriorTrainingRecipe(epochs=args.prior_epochs, lr=args.prior_lr, seed=args.seed),
            seed=args.seed, init_state=init, device=device,
        )  # fmt: skip
        model.load_state_dict(prior_model.state_dict())
    train(model, x, y, epochs=args.epochs, lr=0.05, momentum=0.9, batch_size=100,
          seed=args.seed, device=device)  # fmt: skip
    model.eval()
    sgd_seconds = time.perf_counter() - start
    folded, folded_init = fold(model), fold(init_model.eval())
    folded_init_state = {k: v.detach().clone() for k, v in folded_init.state_dict().items()}
    unfolded = _certify(model, init, (x, y), args, device)
    by_hand = _certify(folded, folded_init_state, (x, y), args, device)
    result = {
        "benchmark": "batchnorm_folding",
        "architecture": f"convnet channels={args.channels} hidden={args.hidden} batch_norm",
        "n": args.n,
        "epochs": args.epochs,
        "checkpoint_test_error": error_rate(model, test_set.x, test_set.y, device),
        "folded_checkpoint_test_error": error_rate(folded, test_set.x, test_set.y, device),
        "unfolded": unfolded,
        "folded_by_hand": by_hand,
        "bound_difference_unfolded_minus_folded": unfolded["bound"] - by_hand["bound"],
        "options": {k: v for k, v in vars(args).items() if k != "device"},
        "sgd_seconds": sgd_seconds,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
    }
    text = json.dumps(result, indent=2, allow_nan=False)
    print(text)
    tag = "_from_prior" if args.from_prior else ""
    out = (
        ROOT / "benchmarks" / "results" / f"batchnorm_folding_n{args.n}_{args.posterior}{tag}.json"
    )
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
