"""``certify --method subspace|quantize``: an Occam certificate for a compressed classifier.

Pipeline (MATH.md §6, §8):

1. subspace: θ = θ₀ + P w with θ₀ = ``factory(seed)``'s initialisation (or the weights of
   an init file fixed before the data, :class:`InitFileFactory`) and P regenerated from
   the same seed; w is trained from 0, or from the least-squares projection of a checkpoint's
   θ − θ₀ (``SubspaceRecipe``); quantize: the checkpoint's weights themselves;
2. for each predeclared candidate (d, L): a codebook with L levels, optional
   quantization-aware fine-tuning (QAT) against that codebook, then the message;
3. the message is DECODED (from its bytes, by a fresh decoder) and the decoded model's 0-1
   errors k are counted on the whole un-augmented training sample (x, y);
4. bound: L(h) ≤ max{p : P[Bin(n, p) ≤ k] ≥ δ·2^(−K)}, K = the message's length in bits.

**The search is paid in the code length.** The message header writes the seed (Elias γ), d
and L (Elias δ), so every candidate is a distinct codeword of one prefix-free code over all
(seed, d, L, symbols). Kraft gives Σ_h 2^(−K(h)) ≤ 1, and the Occam bound holds for all
codewords at once with δ·2^(−K(h)) each: picking the candidate with the smallest bound after
seeing the data costs nothing beyond the bits already counted. The δ budget therefore has a
single part. What is *not* in the message must be fixed before the data: the architecture
factory (the message holds only its 32-bit fingerprint) and the decoder itself.

**Seed and θ₀.** ``factory(seed)`` must build the architecture deterministically from the
integer seed (wrap a plain builder with :func:`seeded_factory`). The message records the seed;
the decoder calls ``factory(seed)`` to regenerate θ₀ and P. ``certify_subspace`` checks that two
calls give the same weights.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from pacbound.bounds import BoundResult, DeltaBudget, DeltaPart, bits_to_nats, occam_binomial
from pacbound.bounds.validation import check_count, check_delta
from pacbound.certify.common import (
    ProgressFactory,
    Timer,
    Verdict,
    check_deterministic,
    model_num_outputs,
    no_progress,
)
from pacbound.compressors import (
    CodebookKind,
    CodebookPrecision,
    CompressedMessage,
    CompressorKind,
    DirectQuantizeCompressor,
    ModelFactory,
    ProjectorKind,
    SubspaceModel,
    SubspaceQuantizeCompressor,
    init_from_checkpoint_lstsq,
    parameter_vector,
    quantization_aware_finetune,
    train_subspace,
)
from pacbound.compressors.base import buffer_vector, load_buffer_vector
from pacbound.compressors.projectors import Projector, check_dimensions
from pacbound.compressors.quantize import Codebook, check_levels, parse_enum
from pacbound.compressors.subspace import Optimizer
from pacbound.errors import InvalidInputError
from pacbound.posterior.risk import count_errors

CERTIFIED_CLASSIFIER = (
    "the decoded compressed model: the deterministic network rebuilt from the message (and "
    "the architecture factory and seed it names), NOT the trained or checkpoint weights"
)
SEARCH_PAYMENT = (
    "Occam binomial-tail inequality; the predeclared (d, L) search is paid in the code "
    "length (the header's prefix-free codes for seed, d and L; Kraft), so it needs no δ"
)
#: Offsets that give each random stream of a run its own seed.
SEED_OFFSETS = {"training": 1, "qat_subset": 2}


class Method(str, Enum):
    SUBSPACE = "subspace"
    QUANTIZE = "quantize"


def seeded_factory(build: Callable[[], nn.Module]) -> ModelFactory:
    """``seed ↦ build()`` run under ``torch.manual_seed(seed)`` with the global RNG restored.

    PyTorch's CPU initialisers are deterministic for a given seed and torch version, so the
    decoder regenerates θ₀ exactly (build on the CPU; move the model afterwards).
    """

    def factory(seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build()

    return factory


@dataclass(frozen=True)
class InitFileFactory:
    """``seed ↦`` the architecture with θ₀ = the weights of an init file; the seed then only
    regenerates P.

    The file must be fixed before the data are seen (e.g. saved before training): the
    decoder needs it as side information that the code length does not pay for, exactly
    like the architecture. Its sha256 goes into the message's architecture fingerprint,
    so decoding with another (or no) init file is refused.
    """

    build: Callable[[], nn.Module]
    state: Mapping[str, Tensor]
    init_sha256: str

    def __call__(self, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = self.build()
        module.load_state_dict(dict(self.state), strict=True)
        return module


def theta0_sha256(state: Mapping[str, Tensor]) -> str:
    """SHA-256 over θ₀'s content (names, dtypes, shapes and bytes in name order), so the
    same weights saved in another file format give the same hash."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes, any dtype
    return h.hexdigest()


def architecture_factory(
    arch: str,
    arch_kwargs: Mapping[str, Any] | None,
    *,
    init: str | Path | None = None,
    unsafe_allow_pickle: bool = False,
) -> ModelFactory:
    """The factory that encoder and decoder share: ``--arch``/``--arch-kwargs`` seeded by the
    message's seed, or with θ₀ from the ``init`` file (checked against the architecture)."""
    from pacbound.io.architectures import build_module, parse_arch
    from pacbound.io.models import load_init_state

    spec = parse_arch(arch)
    kwargs = dict(arch_kwargs or {})

    def build() -> nn.Module:
        return build_module(spec, kwargs)

    if init is None:
        return seeded_factory(build)
    with torch.random.fork_rng(devices=[]):
        reference = build()
    state = load_init_state(init, reference, unsafe_allow_pickle=unsafe_allow_pickle)
    state = {k: v.detach().to("cpu") for k, v in state.items()}
    return InitFileFactory(build, state, theta0_sha256(state))


@dataclass(frozen=True)
class SubspaceRecipe:
    """How w is trained (see :func:`pacbound.compressors.train_subspace`)."""

    epochs: int = 20
    lr: float = 1e-2
    batch_size: int = 128
    optimizer: Optimizer = Optimizer.ADAM
    lr_schedule: str = "constant"

    def to_dict(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "optimizer": Optimizer(self.optimizer).value,
            "lr_schedule": self.lr_schedule,
        }


def _grid(values: int | Sequence[int], name: str) -> tuple[int, ...]:
    grid = (values,) if isinstance(values, int) else tuple(values)
    if not grid or len(set(grid)) != len(grid):
        raise InvalidInputError(f"{name} must be a non-empty list of distinct integers, got {grid}")
    return grid


@dataclass(frozen=True)
class CompressionOptions:
    """Everything that defines a compression certificate, fixed before the data are seen.

    ``d`` and ``levels`` are single values or predeclared lists; every (d, L) pair is tried
    and the smallest bound is reported (paid in the code length, see the module docstring).
    ``d`` is ignored by ``quantize``; ``zero_level`` only applies to it.
    """

    method: Method = Method.SUBSPACE
    d: int | tuple[int, ...] = 1000
    levels: int | tuple[int, ...] = 8
    projector: ProjectorKind = ProjectorKind.KRONECKER
    codebook: CodebookKind = CodebookKind.KMEANS
    precision: CodebookPrecision = CodebookPrecision.FLOAT32
    zero_level: bool = False
    seed: int = 0
    training: SubspaceRecipe = field(default_factory=SubspaceRecipe)
    qat_steps: int = 0
    qat_lr: float = 1e-3
    qat_examples: int = 10000
    delta: float = 0.05
    batch_size: int = 2048
    check_deterministic: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", parse_enum(Method, self.method, "method"))
        object.__setattr__(
            self, "projector", parse_enum(ProjectorKind, self.projector, "projector")
        )
        object.__setattr__(self, "codebook", parse_enum(CodebookKind, self.codebook, "codebook"))
        object.__setattr__(
            self, "precision", parse_enum(CodebookPrecision, self.precision, "precision")
        )
        for L in self.levels_grid:
            check_levels(L)
        for d in self.d_grid:
            if isinstance(d, bool) or not isinstance(d, int) or d < 1:
                raise InvalidInputError(f"d must be a positive integer, got {d!r}", param="d")
        check_delta(self.delta, "--delta")
        if self.seed < 0 or self.qat_steps < 0 or not self.qat_lr > 0:
            raise InvalidInputError(
                f"need seed ≥ 0, qat_steps ≥ 0, qat_lr > 0; got {self.seed}, {self.qat_steps}, "
                f"{self.qat_lr}"
            )
        check_count(self.qat_examples, "qat_examples")
        check_count(self.batch_size, "batch_size")

    @property
    def d_grid(self) -> tuple[int, ...]:
        return _grid(self.d, "d")

    @property
    def levels_grid(self) -> tuple[int, ...]:
        return _grid(self.levels, "levels")

    def budget(self) -> DeltaBudget:
        return DeltaBudget(self.delta, (DeltaPart("occam", self.delta, 1, SEARCH_PAYMENT),))

    def to_dict(self) -> dict[str, Any]:
        subspace = self.method is Method.SUBSPACE
        return {
            "method": self.method.value,
            "d": list(self.d_grid) if subspace else None,
            "levels": list(self.levels_grid),
            "projector": self.projector.value if subspace else None,
            "codebook": self.codebook.value,
            "precision": self.precision.value,
            "zero_level": self.zero_level if not subspace else None,
            "seed": self.seed,
            "training": self.training.to_dict() if subspace else None,
            "qat": {"steps": self.qat_steps, "lr": self.qat_lr, "examples": self.qat_examples},
            "batch_size": self.batch_size,
            "check_deterministic": self.check_deterministic,
        }


@dataclass(frozen=True)
class Candidate:
    """One tried (d, L): its code length, the decoded model's errors and its bound."""

    dimension: int
    levels: int
    code_length_bits: int
    errors: int
    bound: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "dimension": self.dimension,
            "levels": self.levels,
            "code_length_bits": self.code_length_bits,
            "errors": self.errors,
            "bound": self.bound,
        }


@dataclass(frozen=True)
class CompressionCertificate:
    """The outcome of a compression certification (or of re-verifying an artifact)."""

    method: Method
    certificate: BoundResult
    code_length_bits: int
    breakdown: dict[str, int]
    errors: int
    n: int
    budget: DeltaBudget
    verdict: Verdict
    search: tuple[Candidate, ...]
    start: str
    timings: dict[str, float]
    message: CompressedMessage = field(repr=False)
    options: CompressionOptions | None = field(repr=False, default=None)

    @property
    def value(self) -> float:
        return self.certificate.value

    @property
    def artifact_sha256(self) -> str:
        return hashlib.sha256(self.message.to_bytes()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (timings are left out so that equal runs give equal dicts)."""
        m = self.message
        return {
            "method": self.method.value,
            "certified_classifier": CERTIFIED_CLASSIFIER,
            "bound": self.certificate.value,
            "inequality": self.certificate.method,
            "code_length_bits": self.code_length_bits,
            "code_length_nats": self.certificate.complexity_nats,
            "code_length_breakdown": dict(self.breakdown),
            "errors": self.errors,
            "n": self.n,
            "empirical_risk": self.errors / self.n,
            "verdict": self.verdict.to_dict(),
            "delta_budget": self.budget.to_dict(),
            "certificate_terms": self.certificate.to_dict(),
            "compression": {
                "kind": m.kind.value,
                "num_parameters": m.num_parameters,
                "dimension": m.dimension,
                "levels": m.codebook.levels,
                "precision": m.codebook.precision.value,
                "projector": m.projector.value if m.projector is not None else None,
                "seed": m.seed,
                "start": self.start,
                "artifact_sha256": self.artifact_sha256,
            },
            "search": [c.to_dict() for c in self.search],
            "options": self.options.to_dict() if self.options is not None else None,
        }


def _unflatten(module: nn.Module, theta: Tensor) -> dict[str, Tensor]:
    params, offset = {}, 0
    for name, p in module.named_parameters():
        params[name] = theta[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return params


def _qat_loss(
    module: nn.Module, to_theta: Callable[[Tensor], Tensor], x: Tensor, y: Tensor
) -> Callable[[Tensor], Tensor]:
    """Full-batch cross-entropy on a fixed subset, as a function of the coded vector."""

    def loss(v: Tensor) -> Tensor:
        out: Tensor = functional_call(module, _unflatten(module, to_theta(v)), (x,))
        return F.cross_entropy(out, y)

    return loss


def _affine(theta0: Tensor, projector: Projector) -> Callable[[Tensor], Tensor]:
    """w ↦ θ₀ + P w."""
    return lambda w: theta0 + projector.matvec(w)


def _qat_subset(x: Tensor, y: Tensor, options: CompressionOptions, dev: torch.device) -> Any:
    gen = torch.Generator().manual_seed(options.seed + SEED_OFFSETS["qat_subset"])
    idx = torch.randperm(x.shape[0], generator=gen)[: options.qat_examples]
    return x[idx].to(dev), y[idx].to(dev)


def _score(
    message: CompressedMessage,
    decoder: SubspaceQuantizeCompressor | DirectQuantizeCompressor,
    x: Tensor,
    y: Tensor,
    *,
    delta: float,
    batch_size: int,
    deterministic: bool,
    dev: torch.device,
) -> tuple[int, BoundResult, int]:
    """Decode the message's *bytes*, count the decoded model's errors, bound them.

    Also returns the decoded model's number of outputs (the verdict's K).
    """
    decoded = decoder.decompress(message.to_bytes())
    if deterministic:
        check_deterministic(decoded, x, dev)
    outputs = model_num_outputs(decoded, x, dev)
    count = count_errors(decoded, x, y, batch_size=batch_size, device=dev)
    if count.evaluations != x.shape[0]:
        raise AssertionError(f"counted {count.evaluations} of {x.shape[0]} examples")
    n = int(x.shape[0])
    kl = bits_to_nats(message.code_length_bits)
    return count.errors, occam_binomial(count.errors / n, kl=kl, n=n, delta=delta), outputs


def _check_data(x: Tensor, y: Tensor, num_classes: int) -> None:
    if x.shape[0] == 0 or x.shape[0] != y.shape[0]:
        raise InvalidInputError(f"need as many labels as inputs (> 0), got {len(x)}, {len(y)}")
    check_count(num_classes, "num_classes")


def _check_factory(factory: ModelFactory, seed: int) -> nn.Module:
    first, second = factory(seed), factory(seed)
    if not torch.equal(parameter_vector(first), parameter_vector(second)):
        raise InvalidInputError(
            "the architecture factory is not deterministic in its seed (two calls with "
            f"seed {seed} gave different weights), so the decoder could not regenerate θ₀; "
            "wrap the builder with seeded_factory()"
        )
    return first


def _finish(
    method: Method,
    best: tuple[CompressedMessage, int, BoundResult, int],
    search: list[Candidate],
    *,
    start: str,
    budget: DeltaBudget,
    timer: Timer,
    options: CompressionOptions | None,
) -> CompressionCertificate:
    message, errors, bound, num_outputs = best
    return CompressionCertificate(
        method=method,
        certificate=bound,
        code_length_bits=message.code_length_bits,
        breakdown=message.breakdown(),
        errors=errors,
        n=bound.n,
        budget=budget,
        verdict=Verdict(bound.value, num_outputs),
        search=tuple(search),
        start=start,
        timings=dict(timer.seconds),
        message=message,
        options=options,
    )


def certify_subspace(
    factory: ModelFactory,
    x: Tensor,
    y: Tensor,
    *,
    num_classes: int,
    options: CompressionOptions,
    checkpoint_model: nn.Module | None = None,
    device: torch.device | None = None,
    progress: ProgressFactory = no_progress,
) -> CompressionCertificate:
    """Train w in a random subspace of ``factory(options.seed)``, quantize, code, decode, bound.

    For each d of ``options.d``: w starts at 0 (or at the least-squares projection of
    ``checkpoint_model``'s θ − θ₀) and is trained with ``options.training`` on (x, y); for
    each L of ``options.levels``: codebook, QAT (``options.qat_steps``), message, decoded
    errors on all of (x, y), bound. The smallest bound is returned, with every candidate.
    """
    dev = device or torch.device("cpu")
    _check_data(x, y, num_classes)
    budget, timer = options.budget(), Timer()
    reference = _check_factory(factory, options.seed)
    D = sum(p.numel() for p in reference.parameters())
    for d in options.d_grid:
        check_dimensions(D, d)
    recipe = options.training
    qx, qy = _qat_subset(x, y, options, dev)
    search: list[Candidate] = []
    best: tuple[CompressedMessage, int, BoundResult, int] | None = None
    for d in options.d_grid:
        base = SubspaceQuantizeCompressor(
            factory,
            d=d,
            levels=options.levels_grid[0],
            projector=options.projector,
            codebook=options.codebook,
            precision=options.precision,
            seed=options.seed,
            device=dev,
        )
        model = base.subspace_model()
        with timer.phase("training"):
            w0 = None
            if checkpoint_model is not None:
                base._check_model(checkpoint_model)
                delta_theta = parameter_vector(checkpoint_model).to(dev) - model.initial_theta
                w0 = init_from_checkpoint_lstsq(delta_theta, model.projector)
            hook = progress(f"training w (d={d})", recipe.epochs * int(x.shape[0]))
            w = train_subspace(
                model.module,
                model.projector,
                x,
                y,
                epochs=recipe.epochs,
                lr=recipe.lr,
                batch_size=recipe.batch_size,
                seed=options.seed + SEED_OFFSETS["training"],
                optimizer=recipe.optimizer,
                w0=w0,
                lr_schedule=recipe.lr_schedule,
            )
            hook(recipe.epochs * int(x.shape[0]))
        model.module.eval()
        projector = model.projector
        loss = _qat_loss(model.module, _affine(model.initial_theta, projector), qx, qy)
        for levels in options.levels_grid:
            coder = SubspaceQuantizeCompressor(
                factory,
                d=d,
                levels=levels,
                projector=options.projector,
                codebook=options.codebook,
                precision=options.precision,
                seed=options.seed,
                device=dev,
            )
            with timer.phase("quantize"):
                codebook = coder.fit_codebook(w)
                wq = _finetune(w, loss, codebook, options)
                tuned = SubspaceModel(model.module, projector, wq)
                message = coder.compress(tuned, codebook=codebook)
            with timer.phase("evaluate"):
                errors, bound, outputs = _score(
                    message,
                    coder,
                    x,
                    y,
                    delta=budget.part("occam").per_choice,
                    batch_size=options.batch_size,
                    deterministic=options.check_deterministic,
                    dev=dev,
                )
            search.append(Candidate(d, levels, message.code_length_bits, errors, bound.value))
            if best is None or bound.value < best[2].value:
                best = (message, errors, bound, outputs)
    assert best is not None
    start = "zero" if checkpoint_model is None else "checkpoint-lstsq"
    return _finish(
        Method.SUBSPACE,
        best,
        search,
        start=start,
        budget=budget,
        timer=timer,
        options=options,
    )


def _finetune(
    w: Tensor, loss: Callable[[Tensor], Tensor], codebook: Codebook, options: CompressionOptions
) -> Tensor:
    if options.qat_steps == 0:
        return w
    return quantization_aware_finetune(
        w, loss, codebook, steps=options.qat_steps, lr=options.qat_lr
    )


def certify_quantized(
    model: nn.Module,
    factory: ModelFactory,
    x: Tensor,
    y: Tensor,
    *,
    num_classes: int,
    options: CompressionOptions,
    device: torch.device | None = None,
    progress: ProgressFactory = no_progress,
) -> CompressionCertificate:
    """Post-hoc quantization of ``model``'s weights (one shared codebook per L of
    ``options.levels``, optional exact zero level and QAT), coded, decoded and bounded.

    ``factory`` only supplies the architecture for decoding (its seed is irrelevant here).
    """
    dev = device or torch.device("cpu")
    _check_data(x, y, num_classes)
    budget, timer = options.budget(), Timer()
    model = model.to(dev).eval()
    DirectQuantizeCompressor(factory, levels=2, device=dev)._check_model(model)
    theta = parameter_vector(model)
    qx, qy = _qat_subset(x, y, options, dev)
    loss = _qat_loss(model, lambda v: v, qx, qy)
    search: list[Candidate] = []
    best: tuple[CompressedMessage, int, BoundResult, int] | None = None
    hook = progress("quantizing", len(options.levels_grid))
    for levels in options.levels_grid:
        coder = DirectQuantizeCompressor(
            factory,
            levels=levels,
            codebook=options.codebook,
            precision=options.precision,
            zero_level=options.zero_level,
            seed=options.seed,
            device=dev,
        )
        with timer.phase("quantize"):
            codebook = coder.fit_codebook(theta)
            tuned = factory(options.seed).to(dev)
            _load_flat(tuned, _finetune(theta, loss, codebook, options))
            load_buffer_vector(tuned, buffer_vector(model).to(dev))
            message = coder.compress(tuned, codebook=codebook)
        with timer.phase("evaluate"):
            errors, bound, outputs = _score(
                message,
                coder,
                x,
                y,
                delta=budget.part("occam").per_choice,
                batch_size=options.batch_size,
                deterministic=options.check_deterministic,
                dev=dev,
            )
        search.append(
            Candidate(theta.numel(), levels, message.code_length_bits, errors, bound.value)
        )
        if best is None or bound.value < best[2].value:
            best = (message, errors, bound, outputs)
        hook(1)
    assert best is not None
    return _finish(
        Method.QUANTIZE,
        best,
        search,
        start="checkpoint",
        budget=budget,
        timer=timer,
        options=options,
    )


def _load_flat(module: nn.Module, flat: Tensor) -> None:
    with torch.no_grad():
        for p, value in zip(module.parameters(), _unflatten(module, flat).values(), strict=True):
            p.copy_(value)


def decoder_for(
    message: CompressedMessage,
    factory: ModelFactory,
    *,
    seed: int | None = None,
    device: Any = None,
) -> SubspaceQuantizeCompressor | DirectQuantizeCompressor:
    """The compressor that decodes ``message``, configured from the message's own header.

    ``seed``, when given, must match the message's (a mismatch raises InvalidInputError).
    """
    levels = message.codebook.levels
    if message.kind is CompressorKind.DIRECT:
        return DirectQuantizeCompressor(factory, levels=levels, device=device)
    assert message.seed is not None and message.projector is not None
    return SubspaceQuantizeCompressor(
        factory,
        d=message.dimension,
        levels=levels,
        projector=message.projector,
        seed=message.seed if seed is None else seed,
        device=device,
    )


def verify_artifact(
    message_bytes: bytes,
    factory: ModelFactory,
    x: Tensor,
    y: Tensor,
    *,
    num_classes: int,
    delta: float,
    seed: int | None = None,
    device: torch.device | None = None,
    batch_size: int = 2048,
) -> CompressionCertificate:
    """Decode an artifact, recount its errors on (x, y), recompute its code length and bound.

    Raises InvalidInputError for a truncated or corrupted artifact, or one made for another
    architecture (or, when ``seed`` is given, another seed). Compare the result with a saved
    report using :func:`compare_with_report`.
    """
    dev = device or torch.device("cpu")
    _check_data(x, y, num_classes)
    timer = Timer()
    with timer.phase("decode"):
        message = CompressedMessage.from_bytes(bytes(message_bytes))
        decoder = decoder_for(message, factory, seed=seed, device=dev)
    budget = DeltaBudget(
        check_delta(delta, "--delta"), (DeltaPart("occam", delta, 1, SEARCH_PAYMENT),)
    )
    with timer.phase("evaluate"):
        errors, bound, outputs = _score(
            message, decoder, x, y, delta=delta, batch_size=batch_size, deterministic=True, dev=dev
        )
    method = Method.SUBSPACE if message.kind is CompressorKind.SUBSPACE else Method.QUANTIZE
    candidate = Candidate(
        message.dimension, message.codebook.levels, message.code_length_bits, errors, bound.value
    )
    return _finish(
        method,
        (message, errors, bound, outputs),
        [candidate],
        start="artifact",
        budget=budget,
        timer=timer,
        options=None,
    )


#: Report fields that verification recomputes, and how they must agree.
VERIFIED_FIELDS = ("bound", "errors", "n", "code_length_bits")


def compare_with_report(
    certificate: CompressionCertificate, report: Mapping[str, Any]
) -> list[str]:
    """The recomputed values that disagree with a report (``to_dict()`` output); [] if none.

    Counts and code lengths must be equal; the bound must agree to 1e-12 (it is recomputed by
    the same deterministic inversion, so any difference means different inputs).
    """
    ours = certificate.to_dict()
    mismatches = []
    for key in VERIFIED_FIELDS:
        theirs = report.get(key)
        mine = ours[key]
        same = (
            isinstance(theirs, (int, float))
            and math.isclose(float(theirs), float(mine), rel_tol=0.0, abs_tol=1e-12)
            if key == "bound"
            else theirs == mine
        )
        if not same:
            mismatches.append(f"{key}: report says {theirs!r}, recomputed {mine!r}")
    sha = report.get("compression", {}).get("artifact_sha256")
    if sha is not None and sha != certificate.artifact_sha256:
        mismatches.append("artifact_sha256: the report is about another artifact")
    return mismatches
