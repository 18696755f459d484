"""Full soundness harness (issue #7): R runs per method, one JSON object on stdout.

    .venv/bin/python benchmarks/bench_coverage.py --runs 200

Per method and pipeline variant (the correct one and the planted-bug controls): R, δ,
violations (bound < true risk), the exact one-sided binomial p-value P[Bin(R, δ) ≥ V], the
largest ratio true risk / bound, the mean bound and true risk, and the seconds the method's
R runs took (shared by its variants).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from pacbound.harness.coverage import DEFAULT_ALPHA, run_coverage
from pacbound.harness.experiments import coverage_experiments, make_experiment
from pacbound.harness.planted import planted_refusals
from pacbound.harness.synthetic import TRUE_RISK_EXAMPLES, TeacherTask

#: The tight-regime δ of each coverage experiment (pacbound.harness.experiments; 0.2 if absent).
DELTAS = {
    "heldout": 0.2,
    "monte-carlo": 0.01,
    "monte-carlo-per-batch": 0.01,
    "gaussian-init": 0.2,
    "gaussian-data": 0.01,
    "gaussian-per-batch": 0.2,
    "quantize": 0.2,
    "subspace": 0.2,
    "sequence-linear": 0.01,
    "marginal-gp-teacher": 0.05,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="R per method (default 200)")
    parser.add_argument(
        "--methods", default=",".join(coverage_experiments()), help="comma-separated"
    )
    parser.add_argument("--delta", type=float, default=None, help="override every method's δ")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA)
    parser.add_argument("--truth-examples", type=int, default=TRUE_RISK_EXAMPLES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    task = TeacherTask(seed=args.seed)
    start = time.perf_counter()
    results = {}
    for name in args.methods.split(","):
        delta = DELTAS.get(name, 0.2) if args.delta is None else args.delta
        experiment = make_experiment(
            name, task, delta=delta, truth_examples=args.truth_examples, seed=args.seed
        )
        out = run_coverage(experiment, args.runs, alpha=args.alpha)
        results[name] = {variant: r.to_dict() for variant, r in out.items()}
        print(f"{name}: done", file=sys.stderr)
    report = {
        "test": "one-sided exact binomial: p = P[Bin(R, delta) >= V]; unsound if p < alpha",
        "task": {"dim": task.dim, "hidden": task.hidden, "noise": task.noise, "seed": task.seed},
        "truth_examples": args.truth_examples,
        "seconds_total": time.perf_counter() - start,
        "methods": results,
        "planted_models_refused": planted_refusals(task),
    }
    print(json.dumps(report, indent=1, allow_nan=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
