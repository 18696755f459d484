"""Compression certificates: describe a trained model in few bits (MATH.md §6).

A compressor turns a model into a :class:`CompressedMessage`, a prefix-free bitstream whose
length K(h) enters the Occam bound (``pacbound.bounds.occam``, with
``bits_to_nats(message.code_length_bits)``). The certified classifier is the *decoded* model,
``compressor.decompress(message)``, which anyone can rebuild from the message, the architecture
factory and the seed.

One file per strategy: ``projectors`` (random P for θ = θ₀ + P w), ``subspace`` (training w),
``codebooks`` (one shared codebook or one per parameter tensor, QAT), ``coding`` (Elias codes,
arithmetic coder), ``message`` (the container), ``quantized`` (the two compressors behind the
``Compressor`` interface of ``base``).
"""

from pacbound.compressors.base import (
    Compressor,
    ModelFactory,
    architecture_fingerprint,
    load_parameter_vector,
    parameter_vector,
)
from pacbound.compressors.codebooks import (
    AnyCodebook,
    Codebook,
    CodebookKind,
    CodebookPrecision,
    TensorCodebooks,
    dequantize,
    kmeans_codebook,
    quantization_aware_finetune,
    quantize,
    uniform_codebook,
)
from pacbound.compressors.message import CompressedMessage, CompressorKind
from pacbound.compressors.projectors import (
    DenseGaussianProjector,
    KroneckerProjector,
    Projector,
    ProjectorKind,
    ProjectorSpec,
    SparseProjector,
    make_projector,
)
from pacbound.compressors.quantized import (
    CodebookScope,
    DirectQuantizeCompressor,
    SubspaceQuantizeCompressor,
)
from pacbound.compressors.subspace import SubspaceModel, init_from_checkpoint_lstsq, train_subspace

__all__ = [
    "AnyCodebook",
    "Codebook",
    "CodebookKind",
    "CodebookPrecision",
    "CodebookScope",
    "CompressedMessage",
    "Compressor",
    "CompressorKind",
    "DenseGaussianProjector",
    "DirectQuantizeCompressor",
    "KroneckerProjector",
    "ModelFactory",
    "Projector",
    "ProjectorKind",
    "ProjectorSpec",
    "SparseProjector",
    "SubspaceModel",
    "SubspaceQuantizeCompressor",
    "TensorCodebooks",
    "architecture_fingerprint",
    "dequantize",
    "init_from_checkpoint_lstsq",
    "kmeans_codebook",
    "load_parameter_vector",
    "make_projector",
    "parameter_vector",
    "quantization_aware_finetune",
    "quantize",
    "train_subspace",
    "uniform_codebook",
]
