"""Shared driver of the Gaussian PAC-Bayes MNIST benchmarks (not a benchmark itself)."""

from __future__ import annotations

import argparse
import copy
import json
import resource
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
from pacbound.certify.gaussian_checkpoint import CheckpointInputs  # noqa: E402
from pacbound.certify.gaussian_options import GaussianOptions  # noqa: E402
from pacbound.certify.gaussian_prior import data_dependent_prior  # noqa: E402
from pacbound.io import load_dataset, resolve_device  # noqa: E402
from pacbound.models import convnet, mlp  # noqa: E402
from pacbound.posterior.fit import TrainingRecipe  # noqa: E402
from pacbound.posterior.priors import PriorMean, PriorTrainingRecipe  # noqa: E402
from pacbound.posterior.risk import stochastic_error  # noqa: E402

DATA = ROOT / "examples" / "data" / "mnist"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sgd-epochs", type=int, default=5)
    parser.add_argument("--sgd-lr", type=float, default=0.01)
    parser.add_argument("--posterior-epochs", type=int, default=40)
    parser.add_argument("--posterior-optimizer", choices=["sgd", "adam"], default="sgd")
    parser.add_argument("--posterior-lr", type=float, default=1e-3)
    parser.add_argument("--sigma-lr", type=float, default=1e-2)
    parser.add_argument("--p-min", type=float, default=0.5)
    parser.add_argument("--mc-passes", type=int, default=5)
    parser.add_argument("--device", default=None)


def run(
    args: argparse.Namespace,
    *,
    name: str,
    hidden: list[int] | None = None,
    arch: str = "mlp",
    label_map: str | None,
    prior: PriorMean,
    delta: float,
    mc_delta: float,
    published: dict[str, Any],
    prior_recipe: PriorTrainingRecipe | None = None,
    prior_fraction: float = 0.5,
    n: int | None = None,
) -> dict[str, Any]:
    start = time.perf_counter()
    device = resolve_device(args.device)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train_set = load_dataset(DATA, split="train", label_map=label_map, subset=n)
    test_set = load_dataset(DATA, split="test", label_map=label_map)
    num_classes = train_set.num_classes
    torch.manual_seed(args.seed)
    model: nn.Module = (
        convnet(num_classes=num_classes)
        if arch == "convnet"
        else mlp(hidden=hidden or [600], num_classes=num_classes)
    )
    init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    t0 = time.perf_counter()
    if prior is PriorMean.DATA:
        # The user's checkpoint in the paper's pipeline: the prior network (trained on
        # S_prior only, with certify's own seeded split and recipe) fine-tuned on all of S
        # below. certify retrains the prior from the init itself; Q starts at this checkpoint.
        _, prior_model = data_dependent_prior(
            model,
            train_set.x,
            train_set.y,
            prior_fraction=prior_fraction,
            recipe=prior_recipe or PriorTrainingRecipe(seed=args.seed),
            seed=args.seed,
            init_state=init_state,
            device=device,
        )
        model.load_state_dict(prior_model.state_dict())
    train(
        model,
        train_set.x,
        train_set.y,
        epochs=args.sgd_epochs,
        lr=args.sgd_lr,
        momentum=0.9,
        batch_size=100,
        seed=args.seed,
        device=device,
    )
    sgd_seconds = time.perf_counter() - t0
    options = GaussianOptions(
        prior=prior,
        posterior="diagonal",
        prior_fraction=prior_fraction,
        prior_recipe=prior_recipe or PriorTrainingRecipe(seed=args.seed),
        training=TrainingRecipe(
            epochs=args.posterior_epochs,
            lr=args.posterior_lr,
            optimizer=args.posterior_optimizer,
            sigma_lr=args.sigma_lr,
            p_min=args.p_min,
            seed=args.seed,
        ),
        mc_passes=args.mc_passes,
        delta=delta,
        mc_delta=mc_delta,
        seed=args.seed,
    )
    cert = certify_gaussian(
        model,
        train_set.x,
        train_set.y,
        options=options,
        init_state=init_state,
        # the test images (labels ignored) bound Q's disagreement with the checkpoint
        checkpoint_inputs=CheckpointInputs("heldout", test_set.x),
        device=device,
    )
    snn_test = stochastic_error(
        cert.network, test_set.x, test_set.y, passes=5, seed=args.seed + 100, device=device
    )
    wall = time.perf_counter() - start
    prior_model = copy.deepcopy(model)
    with torch.no_grad():
        for p, m in zip(prior_model.parameters(), cert.prior_means, strict=True):
            p.copy_(m)
    return {
        "benchmark": name,
        "architecture": arch
        if arch == "convnet"
        else f"mlp 784-{'-'.join(map(str, hidden or [600]))}",
        "published": published,
        "bound": cert.value,
        "kl_nats": cert.kl_nats,
        "n_bound": cert.n_bound,
        "mc_empirical_risk_estimate": cert.empirical_risk_estimate,
        "mc_empirical_risk_upper_bound": cert.monte_carlo.value,
        "snn_test_error": snn_test,
        "checkpoint_train_error": error_rate(model, train_set.x, train_set.y, device),
        "checkpoint_test_error": error_rate(model, test_set.x, test_set.y, device),
        "prior_mean_test_error": error_rate(prior_model, test_set.x, test_set.y, device),
        "delta_budget": cert.budget.to_dict(),
        "prior_scale": cert.prior_scale,
        "prior_error": cert.prior.get("error"),
        "agreement": cert.agreement,
        "checkpoint_certificate": cert.checkpoint,
        "posterior": {k: v for k, v in cert.posterior.items() if k != "isotropic_search"},
        "non_vacuous": cert.verdict.non_vacuous,
        "options": options.to_dict(),
        "sgd_epochs": args.sgd_epochs,
        "sgd_lr": args.sgd_lr,
        "seconds": {"sgd": sgd_seconds, **cert.timings, "wall_total": wall},
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
    }


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result, indent=2, allow_nan=False))
