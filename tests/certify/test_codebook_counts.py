"""The number of codebooks G in the report: every search candidate and the ``compression``
block say whether a message holds one shared codebook (G = 1) or one per parameter tensor
(G = the number of tensors), so two candidates with the same L are told apart; the certify
phase that ``verify`` runs re-derives G from the artifact."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from torch import nn

from pacbound.certify.factories import seeded_factory
from pacbound.certify.method import Certificate
from pacbound.certify.occam import Candidate, certify_message
from pacbound.certify.occam_options import CompressionMethod, CompressionOptions
from pacbound.certify.quantize import certify_quantized
from pacbound.certify.subspace import certify_subspace
from pacbound.compressors import CompressedMessage, DirectQuantizeCompressor
from pacbound.compressors.quantized import tensor_sizes
from pacbound.report.validate import iter_errors, schema
from tests.certify.test_compression import FACTORY, FAST, _task
from tests.compressors.test_buffers import _images
from tests.compressors.test_tensor_codebooks import scaled_bn_cnn

QUANTIZE = CompressionOptions(method=CompressionMethod.QUANTIZE, levels=(4, 8))


def _bn_task() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = scaled_bn_cnn(1)
    x = _images(300, 99)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return model, x, y


def _compression_errors(results: Mapping[str, Any]) -> list[str]:
    root = schema()
    return list(iter_errors(results, root["$defs"]["compression_results"], root))


@pytest.fixture(scope="module")
def bn_cert() -> Certificate:
    model, x, y = _bn_task()
    return certify_quantized(model, scaled_bn_cnn, x, y, num_classes=3, options=QUANTIZE)


def test_batchnorm_search_records_both_scopes_with_their_codebook_counts(
    bn_cert: Certificate,
) -> None:
    model, x, y = _bn_task()
    groups = len(tensor_sizes(model))
    assert groups == 10  # conv, BatchNorm, conv, BatchNorm, linear: weight and bias each
    cert = bn_cert
    search = cert.results["search"]
    assert [(c["levels"], c.get("codebooks", 1)) for c in search] == [
        (4, 1),
        (4, groups),
        (8, 1),
        (8, groups),
    ]
    for shared, per_tensor in (search[0:2], search[2:4]):
        assert per_tensor["code_length_bits"] > shared["code_length_bits"]  # G books, not 1
    message = CompressedMessage.from_bytes(cert.hypothesis)
    compression = cert.results["compression"]
    assert compression.get("codebooks", 1) == len(message.codebooks)
    chosen = [c for c in search if c["code_length_bits"] == message.code_length_bits]
    assert [c.get("codebooks", 1) for c in chosen] == [compression.get("codebooks", 1)]
    assert chosen[0]["bound"] == cert.value
    # verify's certify phase re-derives G from the artifact alone
    again = certify_message(cert.hypothesis, scaled_bn_cnn, x, y, options=QUANTIZE, seed=None)
    assert again.results["compression"].get("codebooks", 1) == compression.get("codebooks", 1)
    assert again.results["search"] == [chosen[0]]
    assert _compression_errors(cert.results) == []


def test_a_per_tensor_artifact_reports_its_codebook_count(bn_cert: Certificate) -> None:
    """The per-tensor candidates keep the predictions; the certify phase on a per-tensor
    artifact (``verify ARTIFACT``) says G = the number of tensors."""
    model, x, y = _bn_task()
    per_tensor = [c for c in bn_cert.results["search"] if c.get("codebooks", 1) > 1]
    assert len(per_tensor) == 2 and all(c["errors"] == 0 for c in per_tensor)
    coder = DirectQuantizeCompressor(scaled_bn_cnn, levels=4, scope="tensor")
    payload = coder.compress(model).to_bytes()
    certified = certify_message(payload, scaled_bn_cnn, x, y, options=QUANTIZE, seed=None)
    assert certified.results["compression"]["codebooks"] == 10
    assert certified.results["search"][0]["codebooks"] == 10
    assert certified.results["search"][0]["levels"] == 4


def test_shared_only_models_and_subspace_messages_have_one_codebook() -> None:
    x, y = _task()
    one_tensor = seeded_factory(lambda: nn.Linear(10, 2, bias=False))
    cert = certify_quantized(one_tensor(1), one_tensor, x, y, num_classes=2, options=QUANTIZE)
    assert [(c["levels"], c.get("codebooks", 1)) for c in cert.results["search"]] == [
        (4, 1),
        (8, 1),
    ]
    assert "codebooks" not in cert.results["compression"]  # shared: the pre-format-3 shape
    options = dataclasses.replace(FAST, d=(8,), levels=(3,))
    sub = certify_subspace(FACTORY, x, y, num_classes=2, options=options)
    assert "codebooks" not in sub.results["compression"]
    assert [c.get("codebooks", 1) for c in sub.results["search"]] == [1]
    assert _compression_errors(sub.results) == []


def test_candidate_dict_and_schema() -> None:
    candidate = Candidate(12, 4, 300, 2, 0.25, codebooks=5)
    assert candidate.to_dict() == {
        "dimension": 12,
        "levels": 4,
        "codebooks": 5,
        "code_length_bits": 300,
        "errors": 2,
        "bound": 0.25,
    }
    assert Candidate(12, 4, 300, 2, 0.25).codebooks == 1
    assert "codebooks" not in Candidate(12, 4, 300, 2, 0.25).to_dict()
    root = schema()
    rule = root["$defs"]["compression_results"]["properties"]
    bad = dict(candidate.to_dict(), codebooks=0)
    assert list(iter_errors([bad], rule["search"], root)) == [
        "[0].codebooks: 0 is below the minimum 1"
    ]
    assert list(iter_errors([candidate.to_dict()], rule["search"], root)) == []
    half = list(iter_errors({"codebooks": 1.5}, rule["compression"], root))
    assert "codebooks: expected integer, got 1.5" in half
