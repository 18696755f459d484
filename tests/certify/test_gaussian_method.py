"""The Gaussian method object: run = choose + certify, rederive = load + the same certify
phase (identical results except the choice fields), options from the CLI and from a report,
and the facts the report renderers show."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load, save, save_file

from pacbound.certify.gaussian_method import GAUSSIAN, PARAMETERS
from pacbound.certify.method import RunInputs
from pacbound.certify.registry import METHODS
from pacbound.errors import InvalidInputError, UsageError
from pacbound.io import load_dataset, load_model
from pacbound.io.streaming import LazyFeatures
from pacbound.models import mlp
from pacbound.posterior.families import FAMILIES

ARCH_KWARGS = {"in_features": 6, "hidden": [8], "num_classes": 2}
PARAMS: dict[str, Any] = {
    "prior": "init",
    "posterior": "isotropic",
    "prior_scales": "1e-3:1:61",
    "prior_fraction": 0.5,
    "prior_epochs": 2,
    "prior_lr": 0.05,
    "prior_lr_schedule": "cosine",
    "prior_augment_shift": 0,
    "seed": 0,
    "posterior_epochs": 2,
    "posterior_lr": 1e-3,
    "posterior_optimizer": "sgd",
    "keep_best": True,
    "sigma_lr": 1e-2,
    "p_min": 0.5,
    "objective": "kl",
    "mc_passes": 2,
    "delta": 0.05,
    "mc_delta": None,
    "heldout_delta": None,
    "disagreement_delta": None,
    "batch_size": 128,
    "allow_nondeterministic": False,
    "sampler": "auto",
    "init": "init.safetensors",
}


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("task")
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (400,), generator=gen)
    x = torch.randn(400, 6, generator=gen) + 1.5 * (2 * y[:, None] - 1).float()
    np.savez(root / "train.npz", x=x.numpy(), y=y.numpy())
    (root / "streamed").mkdir()  # the same S as a folder read a batch at a time
    np.save(root / "streamed" / "x.npy", x.numpy())
    np.save(root / "streamed" / "y.npy", y.numpy())
    np.savez(root / "test.npz", x=x[:200].numpy() + 0.1, y=y[:200].numpy())
    torch.manual_seed(0)
    model = mlp(**ARCH_KWARGS)  # type: ignore[arg-type]
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, root / "init.safetensors")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, root / "final.safetensors")
    return root


def _inputs(task: Path, heldout: bool = True, data: str = "train.npz") -> RunInputs:
    return RunInputs(
        checkpoint=load_model(task / "final.safetensors", arch="mlp", arch_kwargs=ARCH_KWARGS),
        data=load_dataset(task / data),
        heldout=load_dataset(task / "test.npz") if heldout else None,
        init=task / "init.safetensors",
    )


def _without(results: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in results.items()}
    for dotted in fields:
        head, leaf = dotted.split(".")
        out[head].pop(leaf, None)
    return out


@pytest.mark.parametrize(
    "extra",
    [{}, {"posterior": "diagonal", "prior": "data"}, {"prior": "zero", "sampler": "functional"}],
    ids=["isotropic-init", "diagonal-data", "zero-functional"],
)
def test_rederive_runs_the_same_certify_phase(task: Path, extra: dict[str, Any]) -> None:
    options = GAUSSIAN.options({**PARAMS, **extra})
    run = GAUSSIAN.run(_inputs(task), options)
    res = dict(run.certificate.results)
    assert res["posterior"]["kind"] == options.posterior
    assert run.options["method"] == "gaussian"
    assert run.options["sampler"] == extra.get("sampler", "layers")  # auto: layers here
    assert set(run.inputs) == {"init"}
    recorded = GAUSSIAN.options_from_report(run.options)
    again = GAUSSIAN.rederive(_inputs(task), recorded, run.certificate.hypothesis)
    # Everything but how Q was chosen is re-derived, and agrees bit for bit.
    assert dict(again.results) == _without(res, GAUSSIAN.choice_fields)
    # The same Q and prior (the header's metadata order is not fixed by safetensors).
    assert load(again.hypothesis).keys() == load(run.certificate.hypothesis).keys()
    for key, value in load(again.hypothesis).items():
        assert torch.equal(value, load(run.certificate.hypothesis)[key]), key
    assert _metadata(again.hypothesis) == _metadata(run.certificate.hypothesis)
    assert again.bound == run.certificate.bound
    assert all(f.split(".")[1] in res["posterior"] for f in GAUSSIAN.choice_fields)
    assert res["heldout"] is not None and res["checkpoint"]["disagreement"]["source"] == "heldout"


def _metadata(payload: bytes) -> dict[str, str]:
    (length,) = struct.unpack("<Q", payload[:8])
    return dict(json.loads(payload[8 : 8 + length])["__metadata__"])


def _edit_file(payload: bytes, edit: Any) -> bytes:
    """The posterior file with ``edit(tensors, metadata)`` applied (a forger's rewrite)."""
    tensors, metadata = load(payload), _metadata(payload)
    edit(tensors, metadata)
    return save(tensors, metadata=metadata)


def test_rederive_refuses_a_file_with_another_prior(task: Path) -> None:
    options = GAUSSIAN.options(PARAMS)
    run = GAUSSIAN.run(_inputs(task), options)
    recorded = GAUSSIAN.options_from_report(run.options)

    def shift_prior(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        key = "prior.mu/1.bias"
        tensors[key] = tensors[key] + 1e-3

    forged = _edit_file(run.certificate.hypothesis, shift_prior)
    with pytest.raises(InvalidInputError, match=r"prior mean \(1\.bias\) is not the one"):
        GAUSSIAN.rederive(_inputs(task), recorded, forged)

    def other_scale(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        metadata["prior_scale"] = repr(0.5)

    forged = _edit_file(run.certificate.hypothesis, other_scale)
    with pytest.raises(InvalidInputError, match=r"prior scale 0\.5 is not the grid value"):
        GAUSSIAN.rederive(_inputs(task), recorded, forged)
    diagonal = dataclasses.replace(recorded, posterior="diagonal")
    with pytest.raises(InvalidInputError, match=r"holds a isotropic posterior.* say diagonal"):
        GAUSSIAN.rederive(_inputs(task), diagonal, run.certificate.hypothesis)


def test_streamed_data_prior_rederives_like_the_arrays(task: Path) -> None:
    """S_prior and S_bound are lazy row views of a streamed folder, in run and rederive."""
    options = GAUSSIAN.options({**PARAMS, "prior": "data"})
    streamed = _inputs(task, data="streamed")
    assert isinstance(streamed.data.x, LazyFeatures)
    run = GAUSSIAN.run(streamed, options)
    in_memory = GAUSSIAN.run(_inputs(task), options)
    assert run.certificate.results == in_memory.certificate.results
    again = GAUSSIAN.rederive(
        _inputs(task, data="streamed"),
        GAUSSIAN.options_from_report(run.options),
        run.certificate.hypothesis,
    )
    assert dict(again.results) == _without(dict(run.certificate.results), GAUSSIAN.choice_fields)


def test_options_round_trip_through_the_report() -> None:
    options = GAUSSIAN.options({**PARAMS, "prior_scales": "0.01,0.02,0.05", "mc_delta": 0.002})
    assert options.prior_scales.scales == (0.01, 0.02, 0.05)
    recorded = {"method": "gaussian", **options.to_dict(), "delta": options.delta}
    recorded["sampler"] = "layers"
    back = GAUSSIAN.options_from_report(recorded)
    # A list grid comes back as that list, not as a log-spaced grid of its range.
    assert back.prior_scales == options.prior_scales
    assert back.budget() == options.budget()
    assert back.to_dict() == {**options.to_dict(), "sampler": "layers"}
    forged = {**recorded, "prior_scales": {**recorded["prior_scales"], "values": [0.05]}}
    with pytest.raises(InvalidInputError, match="do not describe the grid they hash to"):
        GAUSSIAN.options_from_report(forged)
    with pytest.raises(InvalidInputError, match="cannot be read by this version"):
        GAUSSIAN.options_from_report({k: v for k, v in recorded.items() if k != "mc_passes"})


def test_options_from_params_refuses_init_prior_without_init() -> None:
    with pytest.raises(UsageError, match="--prior init needs the initial weights"):
        GAUSSIAN.options({**PARAMS, "init": None})
    assert GAUSSIAN.options({**PARAMS, "init": None, "prior": "zero"}).sampler is None


def test_parameters_and_registry() -> None:
    assert METHODS["gaussian"] is GAUSSIAN and next(iter(METHODS)) == "gaussian"
    rule = PARAMETERS["p_min"]
    assert rule is not None and rule.needs == "--posterior diagonal"
    assert [rule.holds({"posterior": name}) for name in FAMILIES] == [False, True]
    assert rule.has({"posterior": "isotropic"}) == "--posterior isotropic"
    init = PARAMETERS["init"]
    assert init is not None and not init.holds({"prior": "zero"}) and init.holds({"prior": "data"})
    assert PARAMETERS["mc_passes"] is None


def test_facts_show_the_certificate(task: Path) -> None:
    run = GAUSSIAN.run(_inputs(task, heldout=False), GAUSSIAN.options(PARAMS))
    res = run.certificate.results
    facts = GAUSSIAN.facts(res)
    assert facts.kl_nats == res["kl_nats"] and facts.code_length_bits is None
    assert facts.empirical_risk_upper == res["empirical_risk"]["upper_bound"]
    assert facts.qualifiers == {"prior": "init", "posterior": "Gaussian, isotropic"}
    estimate, slack = (v for _, v in facts.risk_parts)
    assert estimate + slack == pytest.approx(res["empirical_risk"]["upper_bound"], abs=1e-15)
    assert [name for name, _ in facts.complexity_parts][-1] == "grid cost ln G"
    assert facts.complexity_parts[-1][1] == pytest.approx(np.log(61))
    assert facts.search is not None and len(facts.search.x) == 41 and facts.search.log_x
    assert facts.search.chosen == res["posterior"]["sigma_isotropic_search"]
    assert facts.rows[0] == ("n (examples in the bound)", "400")
    labels = [label for label, _ in facts.rows]
    assert (
        "held-out bound (checkpoint)" not in labels
        and "bound on the checkpoint itself" not in labels
    )
    assert labels[-1] == "Q vs checkpoint (bound data)"
    assert facts.title == "pacbound certificate (PAC-Bayes-kl, Gaussian posterior)"
