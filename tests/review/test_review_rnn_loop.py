"""Adversarial review of 02e67ae: the functional sampler's loop over the examples for models
with an op ``vmap`` cannot batch (nn.RNN/GRU/LSTM fused kernels), and ``own_flat_weights``.

The invariant under attack (MATH.md §10): every tensor the network computes with is drawn once
per example from the posterior, fixed by the prior, or the run is refused; each example's
prediction depends only on its own input and its own draw.

Held (tests assert the behaviour):

* exactness, checked independently of ``functional_call``: each example's output equals a
  deep copy of the model whose parameters were overwritten (``copy_``) with μ + σ·ε_i, ε_i the
  keyed noise rebuilt from the stream's definition, for LSTM with ``proj_size``,
  bidirectional 2-layer LSTM with ``dropout`` (eval), both at once, RNN (relu), a GRU whose
  ``weight_hh_l0`` is tied (``setattr``) to another module's weight (one slot, one draw per
  example used in both places), a GRU called twice with a learned ``h0`` parameter and
  ``flatten_parameters()`` in forward, and LSTMCell / GRUCell (these ``vmap``, no loop);
* refusals by the probes (``check_coverage``): the checkpoint's ``_flat_weights`` kept on the
  first call and computed with; the previous example's input leaking in (state on the
  module); the ``_flat_weights`` cache rewritten in forward with its refs forged;
  randomness from a private ``torch.Generator``, from NumPy and from torch's global generator;
  batch mixing;
* ``_flat_weights`` holding a tensor that is not the layer's own parameter at build time
  (set without ``__setattr__``) is refused by the static check;
* CLI: a bidirectional LSTM certifies with --method gaussian on the functional path (per-example
  draws), and ``verify`` re-derives the report and refuses a forged one (rehashed estimate).

* the loop inside memory chunks (tiny ``max_memory``) gives bit-identical outputs;
* through the CLI, a recurrent model with a private ``torch.Generator`` is refused (exit 3:
  the determinism check, or with --allow-nondeterministic the mean-network check).

Hole (library level, low severity): ``FunctionalGaussian._batched``'s loop detects randomness
only by torch's global generator states, so ``torch.randn(..., generator=private)`` (refused
under ``vmap``, randomness='error') passes ``check_coverage(batch_independence=False)``,
against the module doc's "randomness refused there too". Fix: run the loop under a
``TorchDispatchMode`` refusing every op tagged ``torch.Tag.nondeterministic_seeded`` (what
vmap's randomness check keys on), whatever its generator.

Observation (no hole found): the data-flow probe is ``opaque`` inside the loop exactly as
inside ``vmap`` ("per-example by construction"), which is no longer true by construction in
the loop (module state persists between examples). The mean pass and the batch-independence
pass (mean mode, single examples) are not opaque and catch the honest variants above; only
code that detects the probe could evade them, which the probe module's threat model excludes.
"""

from __future__ import annotations

import copy
import json
import math
import textwrap
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from safetensors.torch import save_file
from torch import Tensor, nn

from pacbound.cli.main import cli
from pacbound.errors import InvalidInputError
from pacbound.posterior.functional import FunctionalGaussian
from pacbound.posterior.network import Sampler, build_stochastic_network
from pacbound.posterior.streams import DrawKey
from pacbound.report.document import results_hash
from tests.posterior._keyed import keyed_noise

SIGMA = 0.3


def _network(model: nn.Module) -> Any:
    net = build_stochastic_network(model, sampler=Sampler.FUNCTIONAL)
    net.set_log_sigma(math.log(SIGMA))
    return net


def _functional_module(net: Any) -> FunctionalGaussian:
    found = [m for m in net.gaussian_modules() if isinstance(m, FunctionalGaussian)]
    assert len(found) == 1
    return found[0]


def _check_exact(model: nn.Module, x: Tensor, looped: bool) -> None:
    """Per-example outputs = a deep copy of the model with its parameters overwritten by the
    example's draw and evaluated on that example alone (no functional_call involved)."""
    ref_model = copy.deepcopy(model)  # deepcopy keeps ties: one tensor, every alias
    mus = {n: p.detach().clone() for n, p in model.named_parameters()}
    net = _network(model)
    key = DrawKey(7, "review-rnn")
    net.set_mode("per_example", key)
    with torch.no_grad():
        out = net(x)
    assert _functional_module(net).looped is looped
    noise = keyed_noise(model, key, len(x))
    own = dict(ref_model.named_parameters())
    for i in range(len(x)):
        with torch.no_grad():
            for name, mu in mus.items():
                own[name].copy_(mu + SIGMA * noise[name][i])
            expected = ref_model(x[i : i + 1])[0]
        assert torch.allclose(out[i], expected, atol=1e-5), (i, out[i], expected)
    # the draws differ between examples: equal inputs, different outputs
    same = x[:1].expand(4, -1).contiguous()
    net.set_mode("per_example", key)
    with torch.no_grad():
        rep = net(same)
    assert float(rep.std(0).max()) > 1e-3


class _Seq(nn.Module):
    """A recurrent layer over 2 steps of 3 features, last step to 2 logits."""

    def __init__(self, rnn: nn.Module, width: int) -> None:
        super().__init__()
        self.rnn = rnn
        self.out = nn.Linear(width, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = self.rnn(x.reshape(-1, 2, 3))[0]
        out: Tensor = self.out(y[:, -1])
        return out


class _Tied(nn.Module):
    """GRU's weight_hh_l0 is another module's weight (tied by setattr: _flat_weights follows),
    used by both modules in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.other = nn.Linear(4, 12, bias=False)
        self.rnn = nn.GRU(3, 4, batch_first=True)
        self.rnn.weight_hh_l0 = self.other.weight
        self.out = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.rnn(x.reshape(-1, 2, 3))[0][:, -1]
        out: Tensor = self.out(h) + self.other(x[:, :4])[:, :2]
        return out


class _TiedTwoRnns(nn.Module):
    """Two GRUs sharing weight_ih_l0 (tied by setattr) and a Linear whose weight is the first
    GRU's weight_hh_l0 (the RNN parameter is the first name of the tie)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.GRU(3, 4, batch_first=True)
        self.b = nn.GRU(3, 4, batch_first=True)
        self.b.weight_ih_l0 = self.a.weight_ih_l0
        self.lin = nn.Linear(4, 12, bias=False)
        self.lin.weight = self.a.weight_hh_l0  # type: ignore[assignment]
        self.out = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        z = x.reshape(-1, 2, 3)
        h = self.a(z)[0][:, -1] + self.b(z)[0][:, -1]
        out: Tensor = self.out(h) + self.lin(x[:, :4])[:, :2]
        return out


class _Twice(nn.Module):
    """A GRU called twice, a learned h0 parameter, flatten_parameters() in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 4, batch_first=True)
        self.h0 = nn.Parameter(torch.randn(1, 1, 4))
        self.out = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        self.rnn.flatten_parameters()
        z = x.reshape(-1, 2, 3)
        h0 = self.h0.expand(1, z.shape[0], 4).contiguous()
        a, h = self.rnn(z, h0)
        b, _ = self.rnn(z, h)
        out: Tensor = self.out(b[:, -1] + a[:, 0])
        return out


class _Cell(nn.Module):
    def __init__(self, lstm: bool) -> None:
        super().__init__()
        self.lstm = lstm
        self.cell: nn.Module = nn.LSTMCell(3, 4) if lstm else nn.GRUCell(3, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        z = x.reshape(-1, 2, 3)
        h = c = torch.zeros(z.shape[0], 4)
        for t in range(2):
            if self.lstm:
                h, c = self.cell(z[:, t], (h, c))
            else:
                h = self.cell(z[:, t], h)
        out: Tensor = self.out(h)
        return out


EXACT: dict[str, tuple[Callable[[], nn.Module], bool]] = {
    "lstm_proj": (lambda: _Seq(nn.LSTM(3, 6, batch_first=True, proj_size=2), 2), True),
    "lstm_bidir_2layer_dropout": (
        lambda: _Seq(
            nn.LSTM(3, 4, num_layers=2, bidirectional=True, dropout=0.5, batch_first=True), 8
        ),
        True,
    ),
    "lstm_proj_bidir_2layer": (
        lambda: _Seq(
            nn.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=2, batch_first=True), 4
        ),
        True,
    ),
    "rnn_relu": (lambda: _Seq(nn.RNN(3, 4, nonlinearity="relu", batch_first=True), 4), True),
    "gru_tied_to_linear": (_Tied, True),
    "gru_twice_h0_flatten": (_Twice, True),
    "two_grus_and_linear_tied": (_TiedTwoRnns, True),
    "lstm_cell": (lambda: _Cell(lstm=True), True),
    "gru_cell": (lambda: _Cell(lstm=False), False),
}


@pytest.mark.filterwarnings("ignore:LSTM with projections")
@pytest.mark.parametrize("name", sorted(EXACT))
def test_loop_outputs_are_the_model_at_each_examples_own_draw(name: str) -> None:
    factory, looped = EXACT[name]
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(5, 6)
    _check_exact(model, x, looped)


def test_a_tied_recurrent_weight_is_one_slot() -> None:
    torch.manual_seed(0)
    net = _network(_Tied().eval())
    assert "rnn.weight_hh_l0" not in [s.name for s in net.slots]
    assert "other.weight" in [s.name for s in net.slots]


# --- held: the probes refuse what the loop would otherwise let through -------------------


class _Base(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 4, batch_first=True)
        self.out = nn.Linear(4, 2)

    def head(self, x: Tensor) -> Tensor:
        out: Tensor = self.out(self.rnn(x.reshape(-1, 2, 3))[0][:, -1])
        return out


class _KeepCheckpoint(_Base):
    """Keeps rnn._flat_weights on the first call (then still the checkpoint's own tensors:
    μ, data-dependent) and computes with them: a point mass the posterior never draws."""

    def forward(self, x: Tensor) -> Tensor:
        if "keep" not in self.__dict__:
            self.__dict__["keep"] = list(self.rnn._flat_weights)
        w = self.__dict__["keep"][0]
        return self.head(x) + 100 * torch.nn.functional.linear(x[:, :3], w)[:, :2]


class _PreviousExample(_Base):
    """The previous call's input (in the loop: the previous example) leaks into the output."""

    def forward(self, x: Tensor) -> Tensor:
        prev = self.__dict__.get("prev", torch.zeros_like(x))
        self.__dict__["prev"] = x.detach()
        return self.head(x) + prev[:, :2]


class _ForgedCache(_Base):
    """Rewrites the fused kernel's weight cache with the first call's tensors and forges the
    refs so that torch does not refresh it from the swapped-in draws."""

    def forward(self, x: Tensor) -> Tensor:
        r = self.rnn
        if "keep" not in self.__dict__:
            self.__dict__["keep"] = list(r._flat_weights)
        r._flat_weights = list(self.__dict__["keep"])
        r._flat_weight_refs = [weakref.ref(getattr(r, n)) for n in r._flat_weights_names]
        return self.head(x)


class _PrivateGenerator(_Base):
    def __init__(self) -> None:
        super().__init__()
        self.gen = torch.Generator().manual_seed(0)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(x) + torch.randn(2, generator=self.gen)


class _NumpyNoise(_Base):
    def forward(self, x: Tensor) -> Tensor:
        return self.head(x) + float(np.random.randn())  # noqa: NPY002 (the global one)


class _GlobalNoise(_Base):
    def forward(self, x: Tensor) -> Tensor:
        return self.head(x) + 0.1 * torch.randn(2)


class _Mixing(_Base):
    def forward(self, x: Tensor) -> Tensor:
        return self.head(x) + x.mean(0)[:2]


REFUSED: dict[str, tuple[type[nn.Module], str]] = {
    "keep_checkpoint_flat_weights": (_KeepCheckpoint, "neither its input"),
    "previous_example_leaks": (_PreviousExample, "cannot be evaluated"),
    "forged_flat_weight_cache": (_ForgedCache, "neither its input"),
    "private_generator": (_PrivateGenerator, r"a random op \(aten.randn.generator\)"),
    "numpy_randomness": (_NumpyNoise, "changing some examples' weight draws"),
    "global_randomness": (_GlobalNoise, "random op"),
    "batch_mixing": (_Mixing, "depends on the other examples"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_probes_refuse_in_loop_mode(name: str) -> None:
    cls, needle = REFUSED[name]
    torch.manual_seed(0)
    net = _network(cls().eval())
    np.random.seed(0)  # noqa: NPY002
    with pytest.raises(InvalidInputError, match=needle):
        net.check_coverage(torch.randn(8, 6))


def test_global_randomness_is_refused_by_the_loop_itself() -> None:
    """Not only by a probe: a per-example pass of the loop refuses torch's global RNG."""
    torch.manual_seed(0)
    net = _network(_GlobalNoise().eval())
    net.set_mode("per_example", DrawKey(0, "r"))
    with (
        pytest.raises(InvalidInputError, match=r"a random op \(aten\.\w+\.\w+\) ran in forward"),
        torch.no_grad(),
    ):
        net(torch.randn(3, 6))


def test_a_foreign_flat_weight_set_without_setattr_is_refused() -> None:
    """_flat_weights entry replaced directly (bypassing RNNBase.__setattr__) by a tensor that
    is not the layer's parameter: a hidden tensor, refused at build."""
    torch.manual_seed(0)
    gru = nn.GRU(3, 4, batch_first=True)
    gru._flat_weights[0] = torch.zeros(12, 3)
    model = _Seq(gru, 4).eval()
    with pytest.raises(InvalidInputError, match=r"_flat_weights"):
        _network(model)


# --- held: the CLI certifies and verifies a recurrent model ------------------------------

USER_MODULE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class BiLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(3, 4, bidirectional=True, batch_first=True)
            self.out = nn.Linear(8, 2)

        def forward(self, x):
            return self.out(self.rnn(x.reshape(-1, 2, 3))[0][:, -1])


    def bilstm():
        return BiLSTM()


    class Noisy(BiLSTM):
        def __init__(self):
            super().__init__()
            self.gen = torch.Generator().manual_seed(0)

        def forward(self, x):
            return super().forward(x) + 0.5 * torch.randn(2, generator=self.gen)


    def noisy():
        return Noisy()
    """
)


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rnnloop")
    (root / "rnnloopmodels.py").write_text(USER_MODULE)
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (10,), generator=gen)
    x = torch.randn(10, 6, generator=gen) + 1.5 * (2 * y[:, None] - 1).float()
    np.savez(root / "train.npz", x=x.numpy(), y=y.numpy())
    return root


def _checkpoints(task: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(task))
    module = __import__("rnnloopmodels")
    torch.manual_seed(0)
    init: nn.Module = module.bilstm().eval()
    save_file({k: v.contiguous() for k, v in init.state_dict().items()}, task / "init.safetensors")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in init.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    save_file({k: v.contiguous() for k, v in init.state_dict().items()}, task / "final.safetensors")


def _certify(task: Path, *extra: str, factory: str = "bilstm") -> Result:
    args = ["certify", str(task / "final.safetensors"), "--arch", f"rnnloopmodels:{factory}"]
    args += ["--init", str(task / "init.safetensors"), "--data", str(task / "train.npz")]
    args += [
        "--prior-scales",
        "1e-3:1:3",
        "--mc-passes",
        "1",
        "--posterior",
        "isotropic",
        "--quiet",
        "--json",
    ]
    return CliRunner().invoke(cli, [*args, *extra])


def test_cli_certifies_and_verify_rederives_a_recurrent_report(
    task: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _checkpoints(task, monkeypatch)
    report = tmp_path / "report.json"
    extra = ["--mc-draws", "per-example", "--batch-size", "5", "--sampler", "functional"]
    extra += ["--save-posterior", str(tmp_path / "q.safetensors"), "--output", str(report)]
    result = _certify(task, *extra)
    assert result.exit_code == 0, result.output
    doc = json.loads(report.read_text())
    risk = doc["results"]["empirical_risk"]
    assert (risk["draws_per"], risk["draws"]) == ("example", 10)
    assert doc["results"]["posterior"]["sampler"] == {"path": "functional"}
    assert 0.0 <= risk["estimate"] <= risk["upper_bound"] <= 1.0
    ok = CliRunner().invoke(cli, ["verify", str(report)])
    assert ok.exit_code == 0, ok.output
    forged = json.loads(json.dumps(doc))
    forged["results"]["empirical_risk"]["estimate"] = risk["estimate"] / 2 + 0.01
    forged["results_sha256"] = results_hash(forged["results"])
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(forged))
    assert CliRunner().invoke(cli, ["verify", str(path)]).exit_code == 1


def test_loop_outputs_do_not_depend_on_the_memory_chunking() -> None:
    """The loop inside memory chunks (a tiny --max-memory: a few examples per chunk) draws the
    same keyed per-example weights as one chunk: the outputs are identical."""
    torch.manual_seed(0)
    model = _Seq(nn.GRU(3, 4, batch_first=True), 4).eval()
    x = torch.randn(9, 6)
    net = _network(model)
    fg = _functional_module(net)
    outs = []
    for budget in (fg.max_memory, 3 * 4 * fg.per_example_elements()):
        fg.max_memory = budget
        net.set_mode("per_example", DrawKey(5, "chunks"))
        with torch.no_grad():
            outs.append(net(x))
    assert fg._plan(9) < 9 and fg.looped
    assert torch.equal(outs[0], outs[1])


def test_private_generator_randomness_is_refused_like_vmap_does() -> None:
    torch.manual_seed(0)
    net = _network(_PrivateGenerator().eval())
    with pytest.raises(InvalidInputError, match="random"):
        net.check_coverage(torch.randn(8, 6), batch_independence=False)


def test_private_generator_randomness_is_refused_by_vmap_without_a_recurrent_layer() -> None:
    """The reference behaviour the loop should match: vmap refuses the same op."""

    class Lin(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.out = nn.Linear(6, 2)
            self.gen = torch.Generator().manual_seed(0)

        def forward(self, x: Tensor) -> Tensor:
            out: Tensor = self.out(x) + torch.randn(2, generator=self.gen)
            return out

    net = _network(Lin().eval())
    with pytest.raises(InvalidInputError, match="random operation"):
        net.check_coverage(torch.randn(8, 6), batch_independence=False)


@pytest.mark.parametrize("allow", [False, True])
def test_cli_refuses_private_generator_randomness_in_a_recurrent_model(
    task: Path, monkeypatch: pytest.MonkeyPatch, allow: bool
) -> None:
    """Through the CLI the library-level gap above is closed by other checks: the
    determinism check, or (--allow-nondeterministic) the mean network = model check."""
    _checkpoints(task, monkeypatch)
    extra = ["--sampler", "functional", "--batch-size", "5"]
    result = _certify(
        task, *extra, *(["--allow-nondeterministic"] if allow else []), factory="noisy"
    )
    assert result.exit_code == 3, result.output
    needle = "does not compute the model's outputs" if allow else "not deterministic"
    assert needle in result.output


def test_each_examples_recurrent_draw_is_fresh_standard_normal_noise() -> None:
    """The keyed noise the loop uses (checked above to be what the network computes with) is
    N(0, 1) per coordinate and uncorrelated between neighbouring examples (2000 examples of
    a GRU's 36 + 48 + 12 + 12 coordinates: mean, variance and lag-1 correlation within
    5 standard errors)."""
    torch.manual_seed(0)
    model = _Seq(nn.GRU(3, 4, batch_first=True), 4).eval()
    noise = keyed_noise(model, DrawKey(11, "moments"), 2000)
    eps = torch.cat([noise[n].reshape(2000, -1) for n in noise if n.startswith("rnn.")], 1)
    assert eps.shape == (2000, 108)
    flat = eps.double()
    se = 1 / math.sqrt(flat.numel())
    assert abs(float(flat.mean())) < 5 * se
    assert abs(float(flat.var()) - 1) < 5 * math.sqrt(2) * se
    lag = float((flat[1:] * flat[:-1]).mean())
    assert abs(lag) < 5 / math.sqrt(flat[1:].numel())
