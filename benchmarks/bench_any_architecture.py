"""Any architecture (issue #13): certificates of the built-in ResNet and transformer on MNIST.

    python benchmarks/bench_any_architecture.py --model resnet
    python benchmarks/bench_any_architecture.py --model transformer
    python benchmarks/bench_any_architecture.py --model resnet --n 5000 --epochs 2   # quick

For ``--model resnet`` (``pacbound.models.resnet``: BatchNorm after every convolution,
residual blocks) or ``--model transformer`` (``pacbound.models.transformer``: row-sequential
MNIST, 28 tokens of 28 pixels, positional Embedding, MultiheadAttention, LayerNorm):

1. **The checkpoint**: trained with the recipe of ``examples/train_mnist_<model>.py``
   (seeded; ``--epochs`` overrides its epochs) on the first ``--n`` MNIST training images
   (all 60000 by default), saving ``init.safetensors`` before training and
   ``final.safetensors`` in ``--workdir``; reused when ``training.json`` there matches.
   Its train and test error (10000 test images) are recorded.
2. **Four certificates through the CLI, exactly as a user runs them** (one
   ``python -m pacbound certify final.safetensors --arch <model> --data <S> …`` process
   each, ``-o`` a JSON report kept in ``--workdir``):
   ``gaussian-init`` (``--prior init --init init.safetensors --posterior diagonal``),
   ``gaussian-data`` (``--prior data --init init.safetensors --posterior diagonal``: the
   prior mean trained from the init on a seeded half of S, the bound on the other half; in
   the pipeline of Pérez-Ortiz et al. 2021 its checkpoint is that prior network,
   ``prior_network.safetensors``, trained first by the library's ``data_dependent_prior``
   with the seed, split and ``--prior-*`` recipe certify uses, so that Q starts at the prior
   mean and is then trained on all of S),
   both with the MNIST test set (its first ``--n-test`` images; all 10000 by default) as
   ``--heldout`` (the checkpoint's test-set bound, and its own certificate
   L(h) ≤ L(Q) + D(h, Q));
   ``subspace`` (``--method subspace --init init.safetensors``) and ``quantize``
   (``--method quantize``). For each: the bound and its terms, the sampler used, the wall
   time of the process (start to exit), its phase timings and its peak RSS. A certificate
   that fails is recorded with its exit code and the tail of its log, and the others still
   run. A certificate whose exact command line already ran to completion in ``--workdir`` is
   reused (so ``--only`` runs add up) unless ``--rerun``.
3. **The Monte-Carlo cost of exact per-example draws**, measured side by side in this one
   process on the same ``--cost-examples`` training images and batch size: seconds per
   example of the certificate's stochastic forward (the library's stochastic network, with
   BatchNorm as ChannelAffine where the library has it and the sampler ``--sampler auto``
   picks, one fresh θ_i ~ Q per example) against the checkpoint's deterministic forward;
   alternated ``--cost-repeats`` times, the fastest of each kept (the machine may be
   shared). Also the memory budget (``--max-memory`` default), the library's estimate of the
   per-example weight tensors of one batch, and how far the peak RSS rose above the RSS
   before the stochastic passes (in a fresh process, Linux ``/proc``), or the peak CUDA
   memory during them.

Prints one JSON object and writes it to ``benchmarks/results/any_architecture_<model>.json``
(``--n`` < 60000 adds ``_n<N>`` to the name, so quick runs do not overwrite the full one).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from _training import error_rate  # noqa: E402
from _training import main as train_main  # noqa: E402
from _training import parser as training_parser  # noqa: E402

from pacbound.io import load_dataset, resolve_device  # noqa: E402
from pacbound.models import BUILTINS  # noqa: E402

DATA = ROOT / "examples" / "data" / "mnist"
RESULTS = ROOT / "benchmarks" / "results"
PRIOR_NETWORK = "prior_network.safetensors"
#: ``--rerun``: run every certificate even when a finished run of its command line exists.
RERUN = False


def _training_defaults(model: str) -> dict[str, Any]:
    return dict(importlib.import_module(f"train_mnist_{model}").DEFAULTS)


def checkpoint(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Train the checkpoint with the example script's recipe, or reuse a matching one."""
    defaults = _training_defaults(args.model)
    if args.epochs is not None:
        defaults["epochs"] = args.epochs
    argv = ["--out", str(workdir), "--seed", str(args.seed), "--arch-kwargs", args.arch_kwargs]
    argv += ["--n", str(args.n)] if args.n is not None else []
    argv += ["--threads", str(args.threads)] if args.threads else []
    train_args = training_parser("", **defaults).parse_args(argv)
    summary_path = workdir / "training.json"
    if summary_path.exists() and not args.retrain:
        summary = json.loads(summary_path.read_text())
        same = {k: v for k, v in vars(train_args).items() if k not in ("data", "out", "threads")}
        if {k: summary["options"].get(k) for k in same} == same:
            summary["reused"] = True
            return summary
    with contextlib.redirect_stdout(sys.stderr):  # this script's stdout is its JSON result
        return {**train_main(args.model, train_args), "reused": False}


def data_arguments(option: str, split: str, n: int | None, workdir: Path) -> list[str]:
    """``--data``/``--heldout`` for the CLI: the IDX folder's ``split``, or its first ``n``
    images as an .npz file in ``workdir``."""
    if n is None:
        return [option, str(DATA), f"{option}-split" if option != "--data" else "--split", split]
    path = workdir / f"{split}_first_{n}.npz"
    if not path.exists():
        data = load_dataset(DATA, split=split)
        np.savez(path, x=data.x[:n].numpy(), y=data.y[:n].numpy())
    return [option, str(path), "--input-shape", "1,28,28"]


def certificates(args: argparse.Namespace, workdir: Path) -> dict[str, list[str]]:
    """The four certificates' command lines (after ``pacbound certify``)."""
    final, init = str(workdir / "final.safetensors"), str(workdir / "init.safetensors")
    arch = ["--arch", args.model, "--arch-kwargs", args.arch_kwargs]
    data = [*data_arguments("--data", "train", args.n, workdir), "--seed", str(args.seed)]
    data += ["--threads", str(args.threads)] if args.threads else []
    data += ["--delta", str(args.delta)] if args.delta is not None else []
    common = [final, *arch, *data]
    heldout = data_arguments("--heldout", "test", args.n_test, workdir)
    diagonal = ["--posterior", "diagonal", "--posterior-epochs", str(args.posterior_epochs)]
    diagonal += ["--mc-passes", str(args.mc_passes)]
    for option, value in (("--mc-draws", args.mc_draws), ("--max-memory", args.max_memory)):
        if value is not None:
            diagonal += [option, value]
    prior = ["--prior", "data", "--init", init, *prior_arguments(args)]
    compression = ["--levels", args.levels]
    subspace = ["--d", args.d, "--subspace-epochs", str(args.subspace_epochs), *compression]
    subspace += ["--subspace-lr", str(args.subspace_lr), "--subspace-lr-schedule", "cosine"]
    subspace += ["--subspace-batch-size", "256", "--qat-steps", str(args.qat_steps)]
    subspace += ["--qat-examples", str(args.qat_examples)]
    pipeline = str(workdir / PRIOR_NETWORK)
    return {
        "gaussian-init": [*common, "--prior", "init", "--init", init, *diagonal, *heldout],
        "gaussian-data": [pipeline, *arch, *data, *prior, *diagonal, *heldout],
        "subspace": [*common, "--method", "subspace", "--init", init, *subspace, *heldout],
        "quantize": [*common, "--method", "quantize", *compression, *heldout],
    }


def prior_arguments(args: argparse.Namespace) -> list[str]:
    """The ``--prior data`` recipe, the same for the pipeline's network and for certify."""
    return [
        "--prior-epochs",
        str(args.prior_epochs),
        "--prior-lr",
        str(args.prior_lr),
        "--prior-augment-shift",
        str(args.prior_augment_shift),
    ]


def prior_network(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The data-dependent prior's pipeline (Pérez-Ortiz et al. 2021): the checkpoint of the
    ``gaussian-data`` certificate is the prior network itself, trained from the init weights
    on S_prior only by the library's ``data_dependent_prior`` with the seed, split and recipe
    that ``certify --prior data`` uses; certify retrains it from the same inputs, so Q starts
    at the prior mean and its KL pays only for what training on all of S moves. Reused when
    ``prior_network.json`` in ``workdir`` records the same recipe and torch thread count (the
    certificates run at ``--threads``, and a prior trained at another count differs in the
    last bits: Q would start away from the prior mean)."""
    from pacbound.certify.gaussian_prior import data_dependent_prior
    from pacbound.posterior.priors import PriorTrainingRecipe

    recipe = PriorTrainingRecipe(
        epochs=args.prior_epochs,
        lr=args.prior_lr,
        augment_shift=args.prior_augment_shift,
        seed=args.seed,
    )
    # the thread count too: certify retrains the prior bit for bit only at the same count
    record = {
        "recipe": recipe.to_dict(),
        "prior_fraction": 0.5,
        "n": args.n,
        "threads": torch.get_num_threads(),
    }
    summary_path = workdir / "prior_network.json"
    if summary_path.exists() and not args.retrain:
        summary = json.loads(summary_path.read_text())
        if {k: summary.get(k) for k in record} == record:
            return {**summary, "reused": True}
    device = resolve_device(args.device)
    train = load_dataset(DATA, split="train", subset=args.n)
    model = BUILTINS[args.model].factory(**json.loads(args.arch_kwargs))
    init_state = load_file(workdir / "init.safetensors")
    start = time.perf_counter()
    split, net = data_dependent_prior(
        model,
        train.x,
        train.y,
        prior_fraction=0.5,
        recipe=recipe,
        seed=args.seed,
        init_state=init_state,
        device=device,
    )
    seconds = time.perf_counter() - start
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
        str(workdir / PRIOR_NETWORK),
    )
    test = load_dataset(DATA, split="test")
    prior_x = train.x[split.prior_indices]
    summary = {
        **record,
        "train_seconds": seconds,
        "prior_split_error": error_rate(net, prior_x, train.y[split.prior_indices], device),
        "test_error": error_rate(net, test.x, test.y, device),
    }
    summary_path.write_text(json.dumps(summary, indent=2, allow_nan=False))
    return {**summary, "reused": False}


def run_certify(name: str, argv: list[str], workdir: Path) -> dict[str, Any]:
    """One ``pacbound certify`` process: its report's numbers, wall time and peak RSS."""
    report, log = workdir / f"{name}.report.json", workdir / f"{name}.log"
    record = workdir / f"{name}.run.json"
    if report.exists() and record.exists() and not reuse_refused(record, argv):
        # the same command line ran to completion before (``--only`` runs add up)
        run = json.loads(record.read_text())
        return {**run, **summarize(json.loads(report.read_text())), "reused": True}
    report.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pacbound", "certify", *argv, "-o", str(report)]
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    run = {
        "argv": ["pacbound", "certify", *argv],
        "exit_code": code,
        "wall_seconds": wall,
        "peak_rss_gib": usage.ru_maxrss / 2**20,
    }
    if code != 0 or not report.exists():
        run["error"] = log.read_text()[-2000:]
        return run
    run["report"] = str(report)
    record.write_text(json.dumps(run, allow_nan=False))
    return {**run, **summarize(json.loads(report.read_text()))}


def reuse_refused(record: Path, argv: list[str]) -> bool:
    """True unless ``record`` is a finished run of exactly ``argv`` (``--rerun`` refuses all)."""
    return RERUN or json.loads(record.read_text()).get("argv") != ["pacbound", "certify", *argv]


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The numbers of a certify report worth quoting (whatever the method)."""
    res, opts = report["results"], report["options"]
    keep = (
        "bound",
        "n",
        "kl_nats",
        "empirical_risk",
        "code_length_bits",
        "heldout",
        "checkpoint",
        "agreement",
    )
    out: dict[str, Any] = {k: res[k] for k in keep if k in res}
    out["non_vacuous"] = res.get("verdict", {}).get("non_vacuous")
    out["sampler"] = opts.get("sampler")
    posterior = res.get("posterior") or {}
    out["posterior"] = {k: v for k, v in posterior.items() if k != "isotropic_search"}
    prior = res.get("prior") or {}
    out["prior"] = {k: prior[k] for k in ("mean", "scale", "error") if k in prior}
    for key in ("decoded", "disagreement", "code_length_breakdown", "breakdown"):
        if key in res:
            out[key] = res[key]
    out["timings_seconds"] = report.get("timings_seconds")
    out["warnings"] = report.get("warnings")
    return out


def _certified_network(model: nn.Module) -> tuple[nn.Module, Any, str]:
    """The network the certificate draws from (BatchNorm as ChannelAffine where the library
    has it), its stochastic copy, and the sampler ``--sampler auto`` picks for it."""
    from pacbound.posterior import network as pn

    try:
        from pacbound.posterior.normalization import to_channel_affine
    except ImportError:  # before BatchNorm support: the model as it is
        net = model
    else:
        net = to_channel_affine(model)
    sampler = pn.auto_sampler(net) if hasattr(pn, "auto_sampler") else pn.Sampler.LAYERS
    buffers = {k: v.detach().clone() for k, v in net.named_buffers()}
    stochastic = pn.build_stochastic_network(net, sampler=sampler, fixed_buffers=buffers)
    return net, stochastic, sampler.value


def _rss(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak since the last reset) in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> int:
    """Reset the peak RSS to the current RSS (Linux ``clear_refs`` 5); returns it."""
    Path("/proc/self/clear_refs").write_text("5")
    return _rss("VmRSS")


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def monte_carlo_cost(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace
) -> dict[str, Any]:
    """Seconds per example of one per-example stochastic pass vs one deterministic pass."""
    from pacbound.posterior import layers, risk, streams

    device = resolve_device(args.device)
    model = model.to(device).eval()
    net, stochastic, sampler = _certified_network(model)
    stochastic.to(device)
    bs = args.batch_size
    gen = streams.DrawStream(args.seed, "monte_carlo")
    with torch.no_grad():  # warm-up
        net(x[:8].to(device))
    risk.count_stochastic_errors(stochastic, x[:8], y[:8], passes=1, stream=gen, device=device)
    det = [_timed(lambda: risk.count_errors(model, x, y, batch_size=bs, device=device))]
    rss_before = _reset_peak_rss()  # the growth during the stochastic passes is measured
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sto: list[float] = []
    for repeat in range(args.cost_repeats):
        if repeat:
            det.append(_timed(lambda: risk.count_errors(model, x, y, batch_size=bs, device=device)))
        sto.append(
            _timed(
                lambda: risk.count_stochastic_errors(
                    stochastic, x, y, passes=1, stream=gen, batch_size=bs, device=device
                )
            )
        )
    peak_growth = _rss("VmHWM") - rss_before
    budget = layers.default_max_memory(device)
    estimate = (
        risk.per_example_bytes(stochastic, bs) if hasattr(risk, "per_example_bytes") else None
    )
    n = x.shape[0]
    out = {
        "examples": n,
        "batch_size": bs,
        "repeats": args.cost_repeats,
        "sampler": sampler,
        "gaussian_modules": sorted({type(m).__name__ for m in stochastic.gaussian_modules()}),
        "deterministic_seconds_per_example": min(det) / n,
        "stochastic_seconds_per_example": min(sto) / n,
        "ratio": min(sto) / min(det),
        "all_seconds": {"deterministic": det, "stochastic": sto},
        "max_memory_budget_bytes": budget,
        "per_example_weight_bytes_estimate": estimate,
        "peak_rss_growth_bytes": peak_growth,
        "within_budget": (estimate is None or estimate <= budget) and peak_growth <= budget,
    }
    if device.type == "cuda":
        out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    return out


def _load(model_name: str, kwargs: dict[str, Any], path: Path) -> nn.Module:
    model = BUILTINS[model_name].factory(**kwargs)
    model.load_state_dict(load_file(path))
    return model.eval()


def arguments() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["resnet", "transformer"], required=True)
    p.add_argument("--arch-kwargs", default="{}", help="JSON keyword arguments of the factory")
    p.add_argument("--n", type=int, default=None, help="use the first N training images")
    p.add_argument("--n-test", type=int, default=None, help="the first N test images held out")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (script default)")
    p.add_argument("--retrain", action="store_true", help="train even if --workdir has one")
    p.add_argument("--workdir", default=None, help="default runs/bench-any-<model>[-n<N>]")
    p.add_argument("--only", default=None, help="comma-separated certificates to run")
    p.add_argument("--rerun", action="store_true", help="rerun certificates already run")
    p.add_argument("--posterior-epochs", type=int, default=10)
    p.add_argument("--prior-epochs", type=int, default=10)
    p.add_argument("--prior-lr", type=float, default=0.05)
    p.add_argument("--prior-augment-shift", type=int, default=2)
    p.add_argument("--mc-passes", type=int, default=5)
    p.add_argument("--mc-draws", default=None, help="passed on when the CLI has --mc-draws")
    p.add_argument("--max-memory", default=None, help="passed on when the CLI has it")
    p.add_argument("--d", default="2000", help="subspace dimension(s)")
    p.add_argument("--subspace-epochs", type=int, default=12)
    p.add_argument("--subspace-lr", type=float, default=0.05)
    p.add_argument("--qat-steps", type=int, default=200)
    p.add_argument("--qat-examples", type=int, default=2000, help="QAT's full-batch subset")
    p.add_argument("--levels", default="3,4,6", help="quantization level(s)")
    p.add_argument("--cost-examples", type=int, default=2048)
    p.add_argument("--cost-repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--delta", type=float, default=None, help="certify's --delta (default 0.05)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--cost-only", action="store_true", help=argparse.SUPPRESS)
    return p


def cost_in_fresh_process(workdir: Path) -> dict[str, Any]:
    """:func:`monte_carlo_cost` in a new process (``--cost-only``), so that the peak RSS it
    measures is not the training's or the data loading's."""
    cmd = [sys.executable, __file__, *sys.argv[1:], "--cost-only", "--workdir", str(workdir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"exit_code": proc.returncode, "error": proc.stderr[-2000:]}
    return dict(json.loads(proc.stdout))


def cost_only(args: argparse.Namespace, workdir: Path) -> None:
    """``--cost-only``: print :func:`monte_carlo_cost` of the trained checkpoint as JSON."""
    device = resolve_device(args.device)
    model = _load(args.model, json.loads(args.arch_kwargs), workdir / "final.safetensors")
    train = load_dataset(DATA, split="train", subset=args.cost_examples)
    cost = monte_carlo_cost(model.to(device), train.x, train.y, args)
    print(json.dumps(cost, allow_nan=False))


def main() -> None:
    args = arguments().parse_args()
    global RERUN
    RERUN = args.rerun
    if args.threads:
        torch.set_num_threads(args.threads)
    suffix = f"-n{args.n}" if args.n is not None and args.n < 60000 else ""
    workdir = Path(args.workdir or ROOT / "runs" / f"bench-any-{args.model}{suffix}")
    workdir.mkdir(parents=True, exist_ok=True)
    if args.cost_only:
        cost_only(args, workdir)
        return
    start = time.perf_counter()
    training = checkpoint(args, workdir)
    kwargs = json.loads(args.arch_kwargs)
    device = resolve_device(args.device)
    model = _load(args.model, kwargs, workdir / "final.safetensors").to(device)
    train, test = load_dataset(DATA, split="train"), load_dataset(DATA, split="test")
    chosen = args.only.split(",") if args.only else None
    pipeline = prior_network(args, workdir) if chosen is None or "gaussian-data" in chosen else None
    runs = {
        name: run_certify(name, argv, workdir)
        for name, argv in certificates(args, workdir).items()
        if chosen is None or name in chosen
    }
    result = {
        "benchmark": f"any-architecture-{args.model}",
        "model": args.model,
        "arch_kwargs": kwargs,
        "parameters": sum(t.numel() for t in model.parameters()),
        "n": args.n or train.x.shape[0],
        "training": training,
        "prior_network": pipeline,
        "checkpoint_test_error": error_rate(model, test.x, test.y, device),
        "certificates": runs,
        "monte_carlo_cost": cost_in_fresh_process(workdir),
        "wall_total_seconds": time.perf_counter() - start,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
    }
    text = json.dumps(result, indent=2, allow_nan=False, default=str)
    print(text)
    out = RESULTS / f"any_architecture_{args.model}{suffix.replace('-', '_')}.json"
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
