"""Adversarial review of issue #13, round 4: uncommon parameter kinds and layer types.

The invariant under attack: every tensor the network computes with is covered by the
posterior (and its KL), fixed by the prior, or the run is refused (MATH.md §10).

Hole (complex parameters): a ``complex64`` ``nn.Parameter`` is accepted by the functional
sampler. Its posterior is drawn as a *complex* normal (variance σ²/2 on each real part), but
:func:`pacbound.posterior.kl.gaussian_kl` casts every block to float64, which discards the
imaginary part: moving the imaginary part of a mean costs no KL at all, and the real part's
term uses the wrong variance. Through the CLI the run then dies with an internal error (exit 5)
in the report. Such a parameter must be refused (exit 3, one line) until its two real
coordinates are drawn and paid for as two real coordinates.

Held (tests assert the behaviour): parametrizations (orthogonal, weight_norm, spectral_norm
of ``torch.nn.utils.parametrizations``), ``nn.Embedding(max_norm=…)`` (in-place renorm),
EmbeddingBag, Bilinear, PReLU, ConvTranspose2d, circular padding, BatchNorm with
``momentum=None``, InstanceNorm tracking statistics, a 0-dim parameter and a weight used both
in its layer and by a raw op all go to the functional path, whose per-example outputs are the
model evaluated at the drawn parameters; the old hook-based spectral/weight norm, LSTM/GRU
(flat weight lists) and ``.data`` reads are refused with one line (exit 3); a frozen
(``requires_grad=False``) parameter is part of the posterior and its KL; the certified
posterior's Monte-Carlo risk re-estimated here with our own per-example draws agrees.
"""

from __future__ import annotations

import copy
import json
import math
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner, Result
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn.utils.parametrizations import orthogonal, spectral_norm, weight_norm

from pacbound.cli.main import cli
from pacbound.errors import InvalidInputError, NumericalError
from pacbound.posterior.functional import FunctionalGaussian
from pacbound.posterior.kl import gaussian_kl
from pacbound.posterior.network import Sampler, auto_sampler, build_stochastic_network
from pacbound.posterior.streams import DrawKey
from pacbound.report.document import results_hash

USER_MODULE = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.nn.utils.parametrizations import orthogonal


    class Cplx(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 2)
            self.c = nn.Parameter(torch.ones(2, dtype=torch.complex64))

        def forward(self, x):
            h = self.fc(x).to(torch.complex64) * self.c
            return h.real + h.imag


    def cplx():
        return Cplx()


    def ortho():
        m = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
        orthogonal(m[0])
        return m


    def frozen():
        m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
        m[0].weight.requires_grad_(False)
        return m


    class DataRead(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 8)
            self.out = nn.Linear(8, 2)

        def forward(self, x):
            return self.out(torch.relu(F.linear(x, self.fc.weight.data, self.fc.bias)))


    def dataread():
        return DataRead()


    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(3, 4, batch_first=True)
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            return self.out(self.rnn(x.reshape(-1, 2, 3))[0][:, -1])


    def recurrent():
        return Recurrent()


    class Alias(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 8)
            self.out = nn.Linear(8, 2)
            # a view of fc.weight: loading the checkpoint into fc.weight rewrites it
            self.register_buffer("w", self.fc.weight.detach(), persistent=False)

        def forward(self, x):
            return self.out(torch.relu(F.linear(x, self.w, self.fc.bias)))


    def alias():
        torch.manual_seed(0)
        return Alias()


    class IntParam(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 2)
            # an integer parameter (requires_grad=False): a table that could memorise labels
            self.table = nn.Parameter(torch.zeros(2, dtype=torch.long), requires_grad=False)

        def forward(self, x):
            return self.fc(x) + self.table.float()


    def intparam():
        return IntParam()


    def lazy():
        return nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 2))


    def hooknorm():
        m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
        torch.nn.utils.spectral_norm(m[0])
        return m
    """
)


def _save(model: nn.Module, path: Path) -> None:
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, path)


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("round4")
    (root / "round4models.py").write_text(USER_MODULE)
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (400,), generator=gen)
    x = torch.randn(400, 6, generator=gen) + 1.5 * (2 * y[:, None] - 1).float()
    np.savez(root / "train.npz", x=x.numpy(), y=y.numpy())
    return root


def _user_model(task: Path, factory: str, monkeypatch: pytest.MonkeyPatch) -> nn.Module:
    monkeypatch.syspath_prepend(str(task))
    module = __import__("round4models")
    torch.manual_seed(0)
    model: nn.Module = getattr(module, factory)()
    return model.eval()


def _checkpoints(
    task: Path,
    factory: str,
    monkeypatch: pytest.MonkeyPatch,
    move: Callable[[nn.Module], None] | None = None,
) -> tuple[nn.Module, nn.Module]:
    """``{factory}_init`` (the fresh build) and ``{factory}`` (``move`` applied, or every
    parameter shifted by deterministic noise: a stand-in for training)."""
    init = _user_model(task, factory, monkeypatch)
    _save(init, task / f"{factory}_init.safetensors")
    final = copy.deepcopy(init)
    with torch.no_grad():
        if move is not None:
            move(final)
        else:
            gen = torch.Generator().manual_seed(1)
            for p in final.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen).to(p.dtype))
    _save(final, task / f"{factory}.safetensors")
    return init, final


def _certify(task: Path, factory: str, *extra: str) -> Result:
    args = [
        "certify",
        str(task / f"{factory}.safetensors"),
        "--arch",
        f"round4models:{factory}",
        "--init",
        str(task / f"{factory}_init.safetensors"),
        "--data",
        str(task / "train.npz"),
        "--prior-scales",
        "1e-3:1:31",
        "--mc-passes",
        "1",
        "--quiet",
        "--json",
        *extra,
    ]
    return CliRunner().invoke(cli, args)


def _report(result: Result) -> dict[str, Any]:
    out = result.output
    doc: dict[str, Any] = json.loads(out[out.index("{") : out.rindex("}") + 1])
    return doc


def _one_line_refusal(result: Result, needle: str) -> None:
    assert result.exit_code == 3, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and needle in lines[0], result.output
    assert "Traceback" not in result.output


# --- hole: complex parameters ------------------------------------------------------------


class _Complex(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.c = nn.Parameter(torch.ones(3, dtype=torch.complex64))

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x).to(torch.complex64) * self.c
        return torch.cat([h.real, h.imag], -1)


def test_a_complex_parameter_is_refused_before_any_draw() -> None:
    """Fixed: the functional sampler drew a complex parameter complex-normal (variance σ²/2 on
    each real part) while the KL saw only the real part; now refused, with the tensor named."""
    with pytest.raises(
        InvalidInputError, match=r"not real floating-point tensors: c \(torch.complex64\)"
    ):
        build_stochastic_network(
            _Complex().eval(), fixed_buffers={}, sampler=Sampler.FUNCTIONAL, log_sigma_init=0.0
        )


def test_the_kl_pays_for_the_imaginary_part_of_a_complex_mean() -> None:
    mu_p = torch.zeros(3, dtype=torch.complex64)
    sigma = torch.ones(3, dtype=torch.complex64)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch: "discards the imaginary part"
            kl = gaussian_kl([(mu_p + 5j, sigma, mu_p, 1.0)])
    except (InvalidInputError, NumericalError):
        return  # refused: fine
    # two real coordinates per entry, each moved by 0 or 5 (real Gaussians with σ = σ_p)
    assert kl >= 3 * 0.5 * 25.0


def test_a_complex_parameter_is_refused_by_the_posterior() -> None:
    x = torch.randn(8, 4)
    model = _Complex().eval()
    assert auto_sampler(model, x) is Sampler.FUNCTIONAL
    with pytest.raises(InvalidInputError):
        net = build_stochastic_network(model, fixed_buffers={}, sampler=Sampler.FUNCTIONAL)
        net.check_coverage(x)


def test_certify_refuses_a_complex_parameter_with_one_line(
    task: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def move_imaginary(model: nn.Module) -> None:
        model.get_parameter("c").imag.fill_(50.0)  # data-derived, never paid for in the KL

    _checkpoints(task, "cplx", monkeypatch, move_imaginary)
    _one_line_refusal(_certify(task, "cplx"), "complex")


# --- held: the functional path computes with the drawn tensors ---------------------------


class _Emb(nn.Module):
    def __init__(self, bag: bool = False, **kwargs: Any) -> None:
        super().__init__()
        self.bag = bag
        self.e = nn.EmbeddingBag(10, 4, mode="mean") if bag else nn.Embedding(10, 4, **kwargs)
        self.fc = nn.Linear(4, 2)

    def forward(self, i: Tensor) -> Tensor:
        h = self.e(i) if self.bag else self.e(i).mean(1)
        return self.fc(h)


class _Bilinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Bilinear(4, 4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(x, x)


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.t = nn.Parameter(torch.tensor(2.0))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x) * self.t


class _BothUses(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.relu(self.fc(x)) + F.linear(x, self.fc.weight))


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))


def _parametrized(register: Callable[[nn.Module], Any]) -> nn.Module:
    m = _mlp()
    register(m[0])
    return m


def _renormed() -> nn.Module:
    m = _Emb(max_norm=1.0)
    with torch.no_grad():
        m.e.weight.mul_(3.0)  # rows above max_norm: forward renormalizes them in place
    return m


def _instance_norm() -> nn.Module:
    m = nn.Sequential(
        nn.Conv1d(4, 3, 1),
        nn.InstanceNorm1d(3, track_running_stats=True, affine=True),
        nn.Flatten(),
        nn.Linear(9, 2),
    )
    with torch.no_grad():
        norm = m[1]
        assert isinstance(norm.running_mean, Tensor)
        norm.running_mean.fill_(0.3)
    return m


_TOKENS = (10, 3)
_IMAGES = (2, 5, 5)
_SEQUENCES = (4, 3)

_FUNCTIONAL_MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "orthogonal": (lambda: _parametrized(orthogonal), (4,)),
    "weight_norm": (lambda: _parametrized(weight_norm), (4,)),
    "spectral_norm": (lambda: _parametrized(spectral_norm), (4,)),
    "embedding_max_norm": (_renormed, _TOKENS),
    "embedding_bag": (lambda: _Emb(bag=True), _TOKENS),
    "bilinear": (_Bilinear, (4,)),
    "prelu": (lambda: nn.Sequential(nn.Linear(4, 4), nn.PReLU(), nn.Linear(4, 2)), (4,)),
    "conv_transpose": (
        lambda: nn.Sequential(nn.ConvTranspose2d(2, 3, 3), nn.Flatten(), nn.Linear(147, 2)),
        _IMAGES,
    ),
    "circular_padding": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"),
            nn.Flatten(),
            nn.Linear(75, 2),
        ),
        _IMAGES,
    ),
    "batchnorm_cumulative": (
        lambda: nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, momentum=None), nn.Linear(3, 2)),
        (4,),
    ),
    "instancenorm_tracked": (_instance_norm, _SEQUENCES),
    "scalar_parameter": (_Scaled, (4,)),
    "layer_and_raw_op": (_BothUses, (4,)),
}


def _inputs(shape: tuple[int, ...], rows: int) -> Tensor:
    gen = torch.Generator().manual_seed(2)
    if shape == _TOKENS:
        return torch.randint(0, shape[0], (rows, shape[1]), generator=gen)
    return torch.randn(rows, *shape, generator=gen)


@pytest.mark.parametrize("name", sorted(_FUNCTIONAL_MODELS))
def test_functional_draws_are_the_tensors_the_model_computes_with(name: str) -> None:
    """Every example's output is the model itself evaluated at that example's drawn
    parameters (every parameter, under its own name), and the mean pass is the model."""
    factory, shape = _FUNCTIONAL_MODELS[name]
    torch.manual_seed(0)
    model = factory().eval()
    x = _inputs(shape, 12)
    assert auto_sampler(model, x) is Sampler.FUNCTIONAL
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    net = build_stochastic_network(
        model, fixed_buffers=buffers, sampler=Sampler.FUNCTIONAL, log_sigma_init=-2.0
    )
    net.check_coverage(x)
    f = net.net
    assert isinstance(f, FunctionalGaussian)
    assert f.slot_names == [n for n, _ in model.named_parameters()]
    reference = copy.deepcopy(model)
    with torch.no_grad():
        net.set_mode("mean")
        assert torch.allclose(net(x), reference(x), atol=1e-5)
        net.set_mode("per_example", DrawKey(3, "review"))
        out = net(x)
        drawn = f._draw_chunk(f._mu(), f._sigma(), int(x.shape[0]), 0)
        alone = torch.cat(
            [
                functional_call(
                    reference,
                    {n: t[i] for n, t in zip(f.slot_names, drawn, strict=True)},
                    (x[i : i + 1],),
                )
                for i in range(int(x.shape[0]))
            ]
        )
    assert torch.allclose(out, alone, atol=1e-5), float((out - alone).abs().max())
    assert not torch.allclose(out, reference(x), atol=1e-3)  # the draws are not the mean
    assert all(torch.equal(b, buffers[k]) for k, b in model.named_buffers())


# --- held: refusals with one line ---------------------------------------------------------


def test_a_recurrent_model_certifies_on_the_functional_path(
    task: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GRU's fused kernel has no vmap batching rule: the functional sampler loops over the
    examples (was: refused, naming its _flat_weights cache as a hidden tensor)."""
    _checkpoints(task, "recurrent", monkeypatch)
    for sampler in ("auto", "functional"):
        result = _certify(task, "recurrent", "--sampler", sampler)
        assert result.exit_code == 0, result.output
        assert _report(result)["results"]["posterior"]["sampler"]["path"] == "functional"


@pytest.mark.parametrize(
    ("factory", "needle"),
    [
        ("dataread", "accessing `data` under vmap"),  # a weight read through .data
        ("hooknorm", "outside its parameters and buffers (0.weight)"),  # hook-based norm
        # a non-persistent buffer that aliases a parameter: it follows the checkpoint's
        # weights (a point mass the posterior never draws) and is caught by the buffer check
        ("alias", "buffers that differ from the --init file or a fresh build: w"),
    ],
)
def test_uncovered_uses_are_refused_with_one_line(
    task: Path, monkeypatch: pytest.MonkeyPatch, factory: str, needle: str
) -> None:
    _checkpoints(task, factory, monkeypatch)
    for sampler in ("auto", "functional"):
        _one_line_refusal(_certify(task, factory, "--sampler", sampler), needle)


# --- held: the certified posterior, re-derived here ---------------------------------------


def _closed_form_kl(saved: dict[str, Tensor], sigma_p: float) -> float:
    total = 0.0
    for key, mu in saved.items():
        if not key.startswith("posterior.mu/"):
            continue
        name = key.removeprefix("posterior.mu/")
        mq, mp = mu.double(), saved[f"prior.mu/{name}"].double()
        sq = saved[f"posterior.log_sigma/{name}"].double().exp()
        terms = (sq / sigma_p) ** 2 + ((mq - mp) / sigma_p) ** 2 - 1 + 2 * math.log(sigma_p)
        total += 0.5 * float((terms - 2 * sq.log()).sum())
    return total


def _own_monte_carlo_risk(
    model: nn.Module, saved: dict[str, Tensor], x: Tensor, y: Tensor, passes: int
) -> float:
    """The posterior's empirical risk with our own fresh per-example draws of every
    parameter (one independent θ per example per pass)."""
    names = [n for n, _ in model.named_parameters()]
    mu = {n: saved[f"posterior.mu/{n}"] for n in names}
    sigma = {n: saved[f"posterior.log_sigma/{n}"].exp() for n in names}
    gen = torch.Generator().manual_seed(123)

    def one(params: dict[str, Tensor], xi: Tensor) -> Tensor:
        out: Tensor = functional_call(model, params, (xi.unsqueeze(0),))
        return out.squeeze(0)

    errors = 0
    with torch.no_grad():
        for _ in range(passes):
            draws = {
                n: mu[n] + sigma[n] * torch.randn((x.shape[0], *mu[n].shape), generator=gen)
                for n in names
            }
            errors += int((vmap(one)(draws, x).argmax(1) != y).sum())
    return errors / (passes * int(x.shape[0]))


@pytest.mark.parametrize("factory", ["ortho", "frozen"])
def test_certified_posterior_is_re_derived_with_our_own_draws(
    task: Path, monkeypatch: pytest.MonkeyPatch, factory: str
) -> None:
    """A parametrized weight (the posterior is on ``original``) and a frozen weight
    (``requires_grad=False``, moved by 'training'): both are posterior coordinates, their
    prior means are the --init file's values, the KL is the closed form over every
    parameter, and the posterior's Monte-Carlo risk with independent per-example draws
    agrees with the library's estimate."""
    init, final = _checkpoints(task, factory, monkeypatch)
    out = task / f"{factory}_posterior.safetensors"
    result = _certify(task, factory, "--save-posterior", str(out))
    assert result.exit_code == 0, result.output
    results = _report(result)["results"]
    saved = load_file(out)
    names = [n for n, _ in final.named_parameters()]
    assert sorted(k.removeprefix("posterior.mu/") for k in saved if "posterior.mu/" in k) == sorted(
        names
    )
    for n, p in init.named_parameters():  # the prior: the data-independent init values
        assert torch.equal(saved[f"prior.mu/{n}"], p.detach())
    for n in names:
        assert bool((saved[f"posterior.log_sigma/{n}"].exp() > 0).all())
    kl = _closed_form_kl(saved, results["prior"]["scale"])
    assert kl > 0 and results["kl_nats"] >= kl and results["kl_nats"] == pytest.approx(kl, rel=1e-6)
    with np.load(task / "train.npz") as data:
        x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
    risk = results["empirical_risk"]
    assert risk["draws_per"] == "example" and risk["draws"] == 400
    ours = _own_monte_carlo_risk(_user_model(task, factory, monkeypatch), saved, x, y, 10)
    se = math.sqrt(max(ours * (1 - ours), 0.01) / 400)  # the library's 400 draws dominate
    assert abs(ours - risk["estimate"]) < 4 * se, (ours, risk["estimate"])
    assert risk["upper_bound"] >= risk["estimate"] and results["bound"] >= risk["upper_bound"]


def _kl_upper(q: float, c: float) -> float:
    """max{p ≥ q : kl(q‖p) ≤ c} by bisection (our own inversion)."""

    def kl(a: float, b: float) -> float:
        out = a * math.log(a / b) if a > 0 else 0.0
        return out + ((1 - a) * math.log((1 - a) / (1 - b)) if a < 1 else 0.0)

    lo, hi = q, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kl(q, mid) <= c else (lo, mid)
    return hi


def test_per_batch_draws_count_batches_and_verify_rederives_them(
    task: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Per-batch draws on the functional path (a parametrized weight): n = 400 and
    --batch-size 64 give B = 50 (largest divisor of 400 not above 64), so K = 2 passes are
    K·n/B = 16 draws, and the Monte-Carlo upper bound is kl⁻¹(L̂, ln(1/δ_MC)/16); verify
    re-derives the report, and a forged estimate (rehashed) is caught."""
    _checkpoints(task, "ortho", monkeypatch)
    report = tmp_path / "report.json"
    extra = ["--mc-passes", "2", "--mc-draws", "per-batch", "--batch-size", "64"]
    extra += ["--save-posterior", str(tmp_path / "q.safetensors"), "--output", str(report)]
    result = _certify(task, "ortho", *extra)
    assert result.exit_code == 0, result.output
    doc = json.loads(report.read_text())
    risk = doc["results"]["empirical_risk"]
    assert (risk["draws_per"], risk["batch"], risk["draws"]) == ("batch", 50, 16)
    delta_mc = next(
        p for p in doc["results"]["delta_budget"]["parts"] if p["name"] == "monte-carlo"
    )
    expected = _kl_upper(risk["estimate"], math.log(1 / delta_mc["per_choice"]) / 16)
    assert risk["upper_bound"] >= expected - 1e-12
    assert risk["upper_bound"] == pytest.approx(expected, abs=1e-9)
    assert doc["results"]["posterior"]["sampler"] == {"path": "functional"}
    ok = CliRunner().invoke(cli, ["verify", str(report)])
    assert ok.exit_code == 0, ok.output
    forged_doc = json.loads(json.dumps(doc))
    forged_doc["results"]["empirical_risk"]["estimate"] = risk["estimate"] / 2
    forged_doc["results_sha256"] = results_hash(forged_doc["results"])
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(forged_doc))
    assert CliRunner().invoke(cli, ["verify", str(forged)]).exit_code == 1


def _move_table(model: nn.Module) -> None:
    model.get_parameter("table").copy_(torch.tensor([0, 3]))  # a data-derived integer table


def test_an_integer_parameter_is_refused_with_one_line(
    task: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _checkpoints(task, "intparam", monkeypatch, _move_table)
    for sampler in ("auto", "functional"):
        _one_line_refusal(_certify(task, "intparam", "--sampler", sampler), "table")


def test_the_functional_path_refuses_an_integer_parameter(
    task: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _user_model(task, "intparam", monkeypatch)
    x = torch.randn(8, 6)
    assert auto_sampler(model, x) is Sampler.FUNCTIONAL
    with pytest.raises(InvalidInputError, match="table"):
        build_stochastic_network(model, fixed_buffers={}, sampler=Sampler.FUNCTIONAL)


class _ComplexLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 1, dtype=torch.complex64)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x.to(torch.complex64) * torch.tensor([1, 1j]))
        return torch.cat([h.real, h.imag], -1)


def test_a_complex_linear_is_refused_by_the_layer_sampler() -> None:
    torch.manual_seed(0)
    model = _ComplexLinear().eval()
    x = torch.ones(4000, 2)
    try:
        net = build_stochastic_network(
            model, fixed_buffers={}, sampler=Sampler.LAYERS, log_sigma_init=0.0
        )
        net.check_coverage(x[:16])
    except InvalidInputError:
        return  # refused: fine
    with torch.no_grad():
        net.set_mode("per_example", DrawKey(0, "review"))
        out = net(x)
        net.set_mode("mean")
        spread = float(((out - net(x[:1])) ** 2).sum(1).mean())
    # weights and bias complex-normal with E|ε|² = σ² = 1: E|y − μ|² = |1|² + |i|² + 1 = 3
    assert abs(spread - 3.0) < 0.2, spread


# --- held: the layer samplers draw what a genuine per-example weight draw gives ----------

_LAYER_MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "layernorm_without_bias": (
        lambda: nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4, bias=False), nn.Linear(4, 2)),
        (4,),
    ),
    "linear_without_bias": (
        lambda: nn.Sequential(nn.Linear(4, 4, bias=False), nn.Tanh(), nn.Linear(4, 2, bias=False)),
        (4,),
    ),
    "conv_same_padding": (
        lambda: nn.Sequential(nn.Conv1d(2, 3, 4, padding="same"), nn.Flatten(), nn.Linear(15, 2)),
        (2, 5),
    ),
    "conv3d": (
        lambda: nn.Sequential(nn.Conv3d(1, 2, 2), nn.Flatten(), nn.Linear(16, 2)),
        (1, 3, 3, 3),
    ),
    "groupnorm": (
        lambda: nn.Sequential(
            nn.Conv1d(2, 4, 1), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(20, 2)
        ),
        (2, 5),
    ),
    "linear_on_sequences": (
        lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Flatten(), nn.Linear(20, 2)),
        (5, 3),
    ),
}


def _output_moments(model: nn.Module, x: Tensor, sampler: Sampler) -> tuple[Tensor, Tensor]:
    net = build_stochastic_network(model, fixed_buffers={}, sampler=sampler, log_sigma_init=-1.0)
    net.set_mode("per_example", DrawKey(1, "review"))
    with torch.no_grad():
        out = net(x)
    return out.mean(0), out.var(0)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("name", sorted(_LAYER_MODELS))
def test_layer_samplers_match_whole_vector_draws_in_distribution(name: str) -> None:
    """One input repeated 3000 times: the outputs of the exact layer samplers have the mean
    and variance of the functional path's genuine whole-vector draws (σ = e⁻¹, large enough
    that a sampler drawing per position, or with a wrong variance, is far outside)."""
    factory, shape = _LAYER_MODELS[name]
    torch.manual_seed(0)
    model = factory().eval()
    gen = torch.Generator().manual_seed(5)
    assert auto_sampler(model, torch.randn(8, *shape, generator=gen)) is Sampler.LAYERS
    x = torch.randn(1, *shape, generator=gen).expand(3000, *shape).contiguous()
    mean_l, var_l = _output_moments(model, x, Sampler.LAYERS)
    mean_f, var_f = _output_moments(model, x, Sampler.FUNCTIONAL)
    assert bool(((var_l / var_f - 1).abs() < 0.15).all()), (var_l, var_f)
    assert bool(((mean_l - mean_f).abs() < 5 * torch.sqrt(2 * var_f / 3000)).all())


def test_a_lazy_module_is_refused_with_one_line(
    task: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(task))
    torch.manual_seed(0)
    model = __import__("round4models").lazy()
    model(torch.zeros(1, 6))  # materialized as the user's training would
    _save(model.eval(), task / "lazy_init.safetensors")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)
    _save(model, task / "lazy.safetensors")
    _one_line_refusal(_certify(task, "lazy"), "lazy modules")


def test_per_example_draws_do_not_depend_on_the_batch_size(
    task: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-example draws are keyed by the example's index: a batch size that does not
    divide n (7), one that does (64) and the whole set (400) give the same estimate,
    draws (K·n = 800) and bound on the functional path."""
    _checkpoints(task, "ortho", monkeypatch)
    seen = set()
    for batch in ("7", "64", "400"):
        result = _certify(task, "ortho", "--mc-passes", "2", "--batch-size", batch)
        assert result.exit_code == 0, result.output
        results = _report(result)["results"]
        risk = results["empirical_risk"]
        assert (risk["draws_per"], risk["draws"]) == ("example", 800)
        seen.add((risk["estimate"], risk["upper_bound"], results["bound"]))
    assert len(seen) == 1, seen
