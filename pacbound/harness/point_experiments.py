"""Coverage experiments of certificates for a deterministic classifier: the held-out
test-set bound on a checkpoint, and the Occam bound on a decoded compressed model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from pacbound.bounds import bits_to_nats, occam_binomial, test_set_bound
from pacbound.compressors.base import Compressor
from pacbound.compressors.quantized import DirectQuantizeCompressor, SubspaceQuantizeCompressor
from pacbound.harness.coverage import CORRECT, RunRecord, derive_seed
from pacbound.harness.students import student, train
from pacbound.harness.synthetic import TRUE_RISK_EXAMPLES, TeacherTask
from pacbound.posterior.risk import count_errors


@dataclass
class HeldOutExperiment:
    """Train on S (n examples), bound the checkpoint on a fresh held-out set of m examples."""

    task: TeacherTask
    n: int = 200
    m: int = 200
    delta: float = 0.2
    hidden: int = 16
    steps: int = 100
    lr: float = 0.03
    truth_examples: int = TRUE_RISK_EXAMPLES
    seed: int = 0
    name: str = "heldout"
    variants: tuple[str, ...] = (CORRECT,)

    def run(self, r: int) -> RunRecord:
        gen = torch.Generator().manual_seed(derive_seed(self.name, self.seed, r, "data"))
        x, y = self.task.sample(self.n, gen)
        hx, hy = self.task.sample(self.m, gen)
        model = train(
            student(self.task, self.hidden, derive_seed(self.name, self.seed, r, "init")),
            x,
            y,
            steps=self.steps,
            lr=self.lr,
        )
        bound = test_set_bound(count_errors(model, hx, hy).rate, n=self.m, delta=self.delta)
        truth = self.task.true_risk(
            model, examples=self.truth_examples, seed=derive_seed(self.name, self.seed, r, "truth")
        )
        return RunRecord(truth.value, {CORRECT: bound.value})


def _quantize(factory: Callable[[int], nn.Module], d: int, levels: int, seed: int) -> Compressor:
    return DirectQuantizeCompressor(factory, levels=levels, seed=seed)


def _subspace(factory: Callable[[int], nn.Module], d: int, levels: int, seed: int) -> Compressor:
    return SubspaceQuantizeCompressor(factory, d=d, levels=levels, seed=seed)


#: The compressor of each compression method's experiment (registered method name →
#: compressor from a seeded factory, d, levels and the run's seed).
COMPRESSORS: dict[str, Callable[[Callable[[int], nn.Module], int, int, int], Compressor]] = {
    "quantize": _quantize,
    "subspace": _subspace,
}


@dataclass
class CompressionExperiment:
    """Occam bound on a decoded compressed model: train on S, compress (``quantize``: every
    weight quantized directly; ``subspace``: the least-squares projection of θ − θ₀ onto a
    seeded d-dimensional subspace, quantized), decode, L ≤ occam_binomial(L̂ on S, K bits).
    The certified classifier is the decoded model; its true risk is measured."""

    task: TeacherTask
    kind: str = "quantize"
    n: int = 2000
    delta: float = 0.2
    levels: int = 4
    d: int = 16
    hidden: int = 16
    steps: int = 100
    lr: float = 0.03
    truth_examples: int = TRUE_RISK_EXAMPLES
    seed: int = 0
    variants: tuple[str, ...] = (CORRECT,)
    name: str = "quantize"

    def __post_init__(self) -> None:
        if self.kind not in COMPRESSORS:
            raise ValueError(
                f"no compressor for a coverage experiment of {self.kind!r}; "
                f"valid: {', '.join(COMPRESSORS)}"
            )
        self.name = self.kind

    def run(self, r: int) -> RunRecord:
        gen = torch.Generator().manual_seed(derive_seed(self.name, self.seed, r, "data"))
        x, y = self.task.sample(self.n, gen)

        def factory(seed: int) -> nn.Module:
            return student(self.task, self.hidden, derive_seed(self.name, self.seed, seed))

        compressor = COMPRESSORS[self.kind](factory, self.d, self.levels, r)
        model = train(compressor.build(), x, y, steps=self.steps, lr=self.lr)
        message = compressor.compress(model)
        decoded = compressor.decompress(message.to_bytes())
        rate = count_errors(decoded, x, y).rate
        bound = occam_binomial(
            rate, kl=bits_to_nats(message.code_length_bits), n=self.n, delta=self.delta
        )
        truth = self.task.true_risk(
            decoded,
            examples=self.truth_examples,
            seed=derive_seed(self.name, self.seed, r, "truth"),
        )
        return RunRecord(truth.value, {CORRECT: bound.value})
