"""The certify phase of the compression methods: an Occam certificate for a given message.

Pipeline (MATH.md §6, §8); the *choice* of the message is :mod:`pacbound.certify.subspace`
or :mod:`pacbound.certify.quantize`, this module *certifies* it:

1. the message is DECODED from its bytes by a decoder configured from its own header (and
   the architecture factory and seed it names), and the decoded model is checked to be
   deterministic in eval mode;
2. its 0-1 errors k are counted on the whole un-augmented training sample (x, y);
3. bound: L(h) ≤ max{p : P[Bin(n, p) ≤ k] ≥ δ·2^(−K)}, K = the message's length in bits;
4. with the checkpoint (``certify`` and ``verify REPORT``), the statements about it
   (:mod:`pacbound.certify.compressed_checkpoint`).

**The search is paid in the code length.** The message header writes the seed (Elias γ), d
and L (Elias δ), so every candidate is a distinct codeword of one prefix-free code over all
(seed, d, L, symbols). Kraft gives Σ_h 2^(−K(h)) ≤ 1, and the Occam bound holds for all
codewords at once with δ·2^(−K(h)) each: picking the candidate with the smallest bound after
seeing the data costs nothing beyond the bits already counted. The δ budget therefore has a
single part. What is *not* in the message must be fixed before the data: the architecture
factory (the message holds only its 32-bit fingerprint) and the decoder itself.

``certify`` scores every candidate with :func:`score_message` and certifies the best one
with :func:`certify_message`; ``verify`` runs :func:`certify_message` on the saved artifact.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from pacbound.bounds import BoundResult, bits_to_nats, occam_binomial
from pacbound.bounds.validation import check_count
from pacbound.certify.common import (
    Timer,
    Verdict,
    check_deterministic,
    check_eval_mode,
    model_num_outputs,
)
from pacbound.certify.compressed_checkpoint import CheckpointSets, compare_with_checkpoint
from pacbound.certify.method import Certificate
from pacbound.certify.occam_options import CompressionMethod, CompressionOptions
from pacbound.compressors import (
    CompressedMessage,
    CompressorKind,
    DirectQuantizeCompressor,
    ModelFactory,
    SubspaceQuantizeCompressor,
)
from pacbound.errors import InvalidInputError
from pacbound.posterior.normalization import refuse_state_changes
from pacbound.posterior.probe import check_batch_independence
from pacbound.posterior.risk import count_errors

CERTIFIED_CLASSIFIER = (
    "the decoded compressed model: the deterministic network rebuilt from the message (and "
    "the architecture factory and seed it names), NOT the trained or checkpoint weights"
)
Decoder = SubspaceQuantizeCompressor | DirectQuantizeCompressor


@dataclass(frozen=True)
class Candidate:
    """One tried (d, L, G): its code length, the decoded model's errors and its bound. G is
    the number of codebooks: 1 (shared by every coordinate), or one per parameter tensor
    (a quantize candidate for each L has both). ``to_dict`` records G only when it is
    greater than 1 (per-tensor codebooks), so reports of shared-codebook artifacts keep the
    shape they had before per-tensor codebooks existed and still verify."""

    dimension: int
    levels: int
    code_length_bits: int
    errors: int
    bound: float
    codebooks: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "dimension": self.dimension,
            "levels": self.levels,
            **per_tensor_codebooks(self.codebooks),
            "code_length_bits": self.code_length_bits,
            "errors": self.errors,
            "bound": self.bound,
        }


def per_tensor_codebooks(count: int) -> dict[str, int]:
    """The report's ``codebooks`` field: G for per-tensor codebooks, absent for one shared
    codebook (the only kind older reports know)."""
    return {"codebooks": count} if count > 1 else {}


@dataclass(frozen=True)
class Choice:
    """How the certified message was chosen (for the report; ``verify`` does not redo it):
    every candidate tried and where training started."""

    search: tuple[Candidate, ...]
    start: str
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Scored:
    """A decoded message's errors on the sample, its Occam bound and its number of outputs."""

    message: CompressedMessage
    errors: int
    bound: BoundResult
    num_outputs: int
    decoded: nn.Module = field(repr=False)

    def candidate(self) -> Candidate:
        m = self.message
        return Candidate(
            m.dimension,
            m.codebook.levels,
            m.code_length_bits,
            self.errors,
            self.bound.value,
            codebooks=len(m.codebooks),
        )


def decoder_for(
    message: CompressedMessage,
    factory: ModelFactory,
    *,
    seed: int | None = None,
    device: Any = None,
) -> Decoder:
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


def method_of(message: CompressedMessage) -> CompressionMethod:
    """The method whose search writes messages of this kind."""
    if message.kind is CompressorKind.SUBSPACE:
        return CompressionMethod.SUBSPACE
    return CompressionMethod.QUANTIZE


def check_data(x: Tensor, y: Tensor, num_classes: int) -> None:
    if x.shape[0] == 0 or x.shape[0] != y.shape[0]:
        raise InvalidInputError(f"need as many labels as inputs (> 0), got {len(x)}, {len(y)}")
    check_count(num_classes, "num_classes")


@torch.no_grad()
def check_per_example(
    decoded: nn.Module, x: Tensor, *, options: CompressionOptions, device: torch.device
) -> None:
    """Refuse a decoded model that is not a fixed per-example function: modules that stay in
    train mode, a forward that writes its buffers (statistics re-estimated from S would not
    be paid for by the code length) and outputs that depend on the rest of the batch."""
    decoded.to(device)
    check_eval_mode(decoded)
    batch = x[: min(options.batch_size, int(x.shape[0]))].to(device)
    refuse_state_changes(decoded, batch)
    if options.check_deterministic:
        check_batch_independence(decoded, batch)


def score_message(
    message: CompressedMessage,
    decoder: Decoder,
    x: Tensor,
    y: Tensor,
    *,
    options: CompressionOptions,
    device: torch.device,
) -> Scored:
    """Decode the message's *bytes*, count the decoded model's errors on all of (x, y), bound
    them (δ·2^(−K) per codeword)."""
    decoded = decoder.decompress(message.to_bytes())
    check_per_example(decoded, x, options=options, device=device)
    if options.check_deterministic:
        check_deterministic(decoded, x, device)
    outputs = model_num_outputs(decoded, x, device)
    count = count_errors(decoded, x, y, batch_size=options.batch_size, device=device)
    if count.evaluations != x.shape[0]:
        raise AssertionError(f"counted {count.evaluations} of {x.shape[0]} examples")
    n = int(x.shape[0])
    kl = bits_to_nats(message.code_length_bits)
    delta = options.budget().part("occam").per_choice
    bound = occam_binomial(count.errors / n, kl=kl, n=n, delta=delta)
    return Scored(message, count.errors, bound, outputs, decoded)


def certify_message(
    payload: bytes,
    factory: ModelFactory,
    x: Tensor,
    y: Tensor,
    *,
    options: CompressionOptions,
    seed: int | None,
    checkpoint: CheckpointSets | None = None,
    choice: Choice | None = None,
    device: torch.device | None = None,
) -> Certificate:
    """The certify phase: the Occam certificate of the message ``payload`` (and, with
    ``checkpoint``, the statements about the checkpoint), as ``certify`` and ``verify`` run it.

    ``seed``, when given, must be the message's. ``choice`` is what the report records about
    how the message was chosen; without it (``verify``), the message itself is the one
    candidate and the start is ``"artifact"``. Raises InvalidInputError for a truncated or
    corrupted artifact, or one made for another architecture or seed.
    """
    dev = device or torch.device("cpu")
    timer = Timer()
    with timer.phase("decode"):
        message = CompressedMessage.from_bytes(bytes(payload))
        decoder = decoder_for(message, factory, seed=seed, device=dev)
    with timer.phase("certify"):
        scored = score_message(message, decoder, x, y, options=options, device=dev)
    if choice is None:
        choice = Choice((scored.candidate(),), "artifact")
    budget = options.budget()
    verdict = Verdict(scored.bound.value, scored.num_outputs)
    results = _results(scored, choice, options, verdict, payload)
    if checkpoint is not None:
        with timer.phase("checkpoint"):
            statements = compare_with_checkpoint(
                checkpoint,
                scored.decoded,
                x,
                y,
                certificate=scored.bound,
                options=options,
                device=dev,
            )
        results.update(statements.to_dict())
    return Certificate(
        method=method_of(message).value,
        bound=scored.bound,
        budget=budget,
        verdict=verdict,
        results=results,
        hypothesis=bytes(payload),
        timings={**choice.timings, **timer.seconds},
    )


def _results(
    scored: Scored,
    choice: Choice,
    options: CompressionOptions,
    verdict: Verdict,
    payload: bytes,
) -> dict[str, Any]:
    """The report's results block (without the checkpoint statements); no timings, so that
    equal runs give equal dicts."""
    m, bound, errors = scored.message, scored.bound, scored.errors
    return {
        "method": method_of(m).value,
        "certified_classifier": CERTIFIED_CLASSIFIER,
        "bound": bound.value,
        "inequality": bound.method,
        "code_length_bits": m.code_length_bits,
        "code_length_nats": bound.complexity_nats,
        "code_length_breakdown": m.breakdown(),
        "errors": errors,
        "n": bound.n,
        "empirical_risk": {
            "estimate": errors / bound.n,
            "upper_bound": errors / bound.n,
            "errors": errors,
            "draws": bound.n,
        },
        "verdict": verdict.to_dict(),
        "delta_budget": options.budget().to_dict(),
        "certificate_terms": bound.to_dict(),
        "compression": {
            "kind": m.kind.value,
            "num_parameters": m.num_parameters,
            "dimension": m.dimension,
            "levels": m.codebook.levels,
            **per_tensor_codebooks(len(m.codebooks)),
            "precision": m.codebook.precision.value,
            "projector": m.projector.value if m.projector is not None else None,
            "seed": m.seed,
            "start": choice.start,
            "artifact_sha256": hashlib.sha256(payload).hexdigest(),
        },
        "search": [c.to_dict() for c in choice.search],
        "options": options.to_dict(),
    }


class Search:
    """The candidates of a search, each scored by :func:`score_message`, and the best one
    (the smallest bound; the first on ties)."""

    def __init__(
        self, x: Tensor, y: Tensor, *, options: CompressionOptions, device: torch.device
    ) -> None:
        self.x, self.y, self.options, self.device = x, y, options, device
        self.candidates: list[Candidate] = []
        self.best: Scored | None = None

    def score(self, message: CompressedMessage, coder: Decoder) -> None:
        scored = score_message(
            message, coder, self.x, self.y, options=self.options, device=self.device
        )
        self.candidates.append(scored.candidate())
        if self.best is None or scored.bound.value < self.best.bound.value:
            self.best = scored

    def chosen(self, start: str, timer: Timer) -> tuple[bytes, Choice]:
        """The best message's bytes and the record of the search."""
        assert self.best is not None
        choice = Choice(tuple(self.candidates), start, dict(timer.seconds))
        return self.best.message.to_bytes(), choice
