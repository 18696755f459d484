"""The two concrete compressors: a quantized subspace vector, or quantized weights directly.

* :class:`SubspaceQuantizeCompressor`: θ = θ₀ + P·dequant(symbols), with θ₀ and P regenerated
  from the architecture factory and the seed (Lotfi et al. 2022).
* :class:`DirectQuantizeCompressor`: every parameter tensor quantized post hoc with one shared
  codebook or one codebook per tensor (``scope``), optionally with an exact zero level for
  pruned weights (Zhou et al. 2019).

Both code the symbols with the adaptive arithmetic coder and the buffers with
:mod:`pacbound.compressors.buffers` (BatchNorm statistics coded compactly, integer buffers the
factory does not rebuild coded exactly); see :mod:`pacbound.compressors.message` for what the
code length counts.
"""

from __future__ import annotations

from enum import Enum

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from pacbound.compressors.base import (
    Compressor,
    ModelFactory,
    architecture_fingerprint,
    load_parameter_vector,
    parameter_vector,
)
from pacbound.compressors.buffers import decode_buffers, encode_buffers
from pacbound.compressors.codebooks import (
    AnyCodebook,
    Codebook,
    CodebookKind,
    CodebookPrecision,
    TensorCodebooks,
    check_levels,
    dequantize,
    kmeans_codebook,
    parse_enum,
    quantize,
    uniform_codebook,
)
from pacbound.compressors.message import CompressedMessage, CompressorKind
from pacbound.compressors.projectors import (
    Projector,
    ProjectorKind,
    check_dimensions,
    make_projector,
)
from pacbound.compressors.subspace import SubspaceModel, init_from_checkpoint_lstsq
from pacbound.errors import InvalidInputError


class CodebookScope(str, Enum):
    """Which coordinates share a codebook in a direct message: all of them (format 1/2), or
    those of one parameter tensor (format 3: G codebooks, G × L × precision bits)."""

    SHARED = "shared"
    TENSOR = "tensor"


class _QuantizingCompressor(Compressor):
    """Shared codebook options: L levels, uniform or k-means, stored at ``precision``."""

    def __init__(
        self,
        factory: ModelFactory,
        *,
        levels: int,
        codebook: CodebookKind | str = CodebookKind.KMEANS,
        precision: CodebookPrecision | str = CodebookPrecision.FLOAT32,
        seed: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(factory, seed=seed, device=device)
        self.levels = check_levels(levels)
        self.codebook_kind = parse_enum(CodebookKind, codebook, "codebook")
        self.precision = parse_enum(CodebookPrecision, precision, "precision")

    def fit_codebook(self, values: Tensor) -> Codebook:
        if self.codebook_kind is CodebookKind.UNIFORM:
            return uniform_codebook(values, self.levels, precision=self.precision)
        return kmeans_codebook(values, self.levels, seed=self.seed, precision=self.precision)

    def _check_model(self, model: nn.Module) -> nn.Module:
        reference = self.build()
        if architecture_fingerprint(model) != architecture_fingerprint(reference):
            raise InvalidInputError(
                "the model does not have the architecture the compressor's factory builds "
                "(parameter names or shapes differ)"
            )
        return reference


class SubspaceQuantizeCompressor(_QuantizingCompressor):
    """θ₀ + P·dequant(w): a d-dimensional subspace vector, quantized to L levels and coded.

    ``compress`` takes either the :class:`SubspaceModel` you trained (its w is used) or any
    model of the architecture (w is then the least-squares projection of θ − θ₀).
    """

    kind = CompressorKind.SUBSPACE
    uses_seed = True

    def __init__(
        self,
        factory: ModelFactory,
        *,
        d: int,
        levels: int,
        projector: ProjectorKind | str = ProjectorKind.KRONECKER,
        codebook: CodebookKind | str = CodebookKind.KMEANS,
        precision: CodebookPrecision | str = CodebookPrecision.FLOAT32,
        seed: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(
            factory, levels=levels, codebook=codebook, precision=precision, seed=seed, device=device
        )
        self.d = d
        self.projector_kind = parse_enum(ProjectorKind, projector, "projector")

    def projector(
        self, D: int, *, kind: ProjectorKind | None = None, d: int | None = None
    ) -> Projector:
        """P for D parameters, regenerated from the seed."""
        return make_projector(
            kind or self.projector_kind, D=D, d=d or self.d, seed=self.seed, device=self.device
        )

    def subspace_model(self) -> SubspaceModel:
        """θ₀ (the factory's init for the seed) + P w with w = 0: train its ``w``."""
        module = self.build()
        return SubspaceModel(module, self.projector(sum(p.numel() for p in module.parameters())))

    def compress(self, model: nn.Module, *, codebook: Codebook | None = None) -> CompressedMessage:
        """``codebook`` (default: fitted to w) lets a QAT-tuned w keep the codebook it was
        tuned for."""
        inner = model.module if isinstance(model, SubspaceModel) else model
        reference = self._check_model(inner)
        theta0 = parameter_vector(reference)
        D = theta0.numel()
        check_dimensions(D, self.d)
        if isinstance(model, SubspaceModel):
            if model.projector.to_spec() != self.projector(D).to_spec():
                raise InvalidInputError(
                    f"the subspace model uses {model.projector.to_spec()}, not this "
                    "compressor's projector; build it with compressor.subspace_model()"
                )
            if not torch.equal(model.initial_theta.cpu(), theta0.cpu()):
                raise InvalidInputError(
                    "the subspace model's θ₀ is not the factory's initialisation for "
                    f"seed {self.seed}; build it with compressor.subspace_model()"
                )
            w = model.w.detach()
        else:
            w = init_from_checkpoint_lstsq(parameter_vector(inner) - theta0, self.projector(D))
        codebook = codebook or self.fit_codebook(w)
        return CompressedMessage(
            self.kind,
            self.fingerprint(reference),
            D,
            codebook,
            quantize(w, codebook),
            encode_buffers(inner, reference),
            seed=self.seed,
            projector=self.projector_kind,
        )

    def decompress(self, message: CompressedMessage | bytes) -> nn.Module:
        parsed = self._parse(message)
        module = self.build(parsed.seed)
        self._check_architecture(parsed, module)
        assert parsed.projector is not None
        projector = self.projector(parsed.num_parameters, kind=parsed.projector, d=parsed.dimension)
        w = _as_tensor(dequantize(parsed.symbols, parsed.codebook), projector.dtype, self.device)
        theta = parameter_vector(module) + projector.matvec(w)
        load_parameter_vector(module, theta)
        decode_buffers(module, parsed.buffers)
        return module.eval()


class DirectQuantizeCompressor(_QuantizingCompressor):
    """Post-hoc quantization of every weight with L-level codebooks: one shared by all
    coordinates (``scope="shared"``) or one per parameter tensor (``scope="tensor"``, each
    fitted to its tensor alone; a model with one tensor gets the shared form).

    With ``zero_level=True`` the level nearest 0 of every codebook is replaced by an exact 0,
    so that pruned (zero) weights stay zero. The seed only chooses the k-means subsample;
    decoding does not depend on it, so it is not part of the message. The decoder reads
    whether the codebooks are per tensor from the message.
    """

    kind = CompressorKind.DIRECT
    uses_seed = False

    def __init__(
        self,
        factory: ModelFactory,
        *,
        levels: int,
        codebook: CodebookKind | str = CodebookKind.KMEANS,
        precision: CodebookPrecision | str = CodebookPrecision.FLOAT32,
        zero_level: bool = False,
        scope: CodebookScope | str = CodebookScope.SHARED,
        seed: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(
            factory, levels=levels, codebook=codebook, precision=precision, seed=seed, device=device
        )
        self.zero_level = zero_level
        self.scope = parse_enum(CodebookScope, scope, "scope")

    def fit_codebook(self, values: Tensor) -> Codebook:
        book = super().fit_codebook(values)
        if not self.zero_level:
            return book
        levels = book.to_array()
        levels[np.argmin(np.abs(levels))] = 0.0
        return Codebook.from_floats(levels, book.precision)

    def fit_codebooks(self, model: nn.Module, theta: Tensor | None = None) -> AnyCodebook:
        """The codebook(s) of the compressor's scope for ``theta`` (default: ``model``'s
        parameter vector), cut into ``model``'s parameter tensors."""
        theta = parameter_vector(model) if theta is None else theta
        sizes = tensor_sizes(model)
        if self.scope is CodebookScope.SHARED or len(sizes) < 2:
            return self.fit_codebook(theta)
        stops = np.cumsum(sizes).tolist()
        books = [
            self.fit_codebook(theta[stop - n : stop]) for n, stop in zip(sizes, stops, strict=True)
        ]
        return TensorCodebooks(tuple(books), sizes)

    def compress(
        self, model: nn.Module, *, codebook: AnyCodebook | None = None
    ) -> CompressedMessage:
        """``codebook`` (default: :meth:`fit_codebooks`) as for the subspace compressor."""
        reference = self._check_model(model)
        theta = parameter_vector(model)
        codebook = codebook or self.fit_codebooks(model, theta)
        books = codebook.books if isinstance(codebook, TensorCodebooks) else (codebook,)
        return CompressedMessage(
            self.kind,
            self.fingerprint(reference),
            theta.numel(),
            books[0],
            quantize(theta, codebook),
            encode_buffers(model, reference),
            tensor_codebooks=books if len(books) > 1 else (),
        )

    def decompress(self, message: CompressedMessage | bytes) -> nn.Module:
        parsed = self._parse(message)
        module = self.build()
        self._check_architecture(parsed, module)
        codebook: AnyCodebook = parsed.codebook
        if parsed.tensor_codebooks:
            sizes = tensor_sizes(module)
            if len(sizes) != len(parsed.tensor_codebooks):
                raise InvalidInputError(
                    f"this artifact has {len(parsed.tensor_codebooks)} per-tensor codebooks "
                    f"but the architecture {len(sizes)} parameter tensors"
                )
            codebook = TensorCodebooks(parsed.tensor_codebooks, sizes)
        dtype = next(module.parameters()).dtype
        load_parameter_vector(
            module, _as_tensor(dequantize(parsed.symbols, codebook), dtype, self.device)
        )
        decode_buffers(module, parsed.buffers)
        return module.eval()


def tensor_sizes(module: nn.Module) -> tuple[int, ...]:
    """The sizes of the parameter tensors, in :func:`parameter_vector`'s order."""
    return tuple(p.numel() for p in module.parameters())


def _as_tensor(values: NDArray[np.float64], dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.from_numpy(values).to(dtype).to(device)
