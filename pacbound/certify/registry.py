"""The registry of certification methods: name → :class:`~pacbound.certify.method.Method`.

Like :data:`pacbound.models.BUILTINS`, this dict is the one place that lists the methods;
the CLI's ``--method`` choices, the report schema's enum, the option-applicability rules and
the harness list are derived from it. Adding a method is one module plus one line here.
"""

from __future__ import annotations

from pacbound.certify.gaussian_method import GAUSSIAN
from pacbound.certify.marginal_method import MARGINAL
from pacbound.certify.method import Method
from pacbound.certify.quantize import QUANTIZE
from pacbound.certify.subspace import SUBSPACE
from pacbound.errors import UsageError

METHODS: dict[str, Method] = {
    GAUSSIAN.name: GAUSSIAN,  # first: the default --method
    SUBSPACE.name: SUBSPACE,
    QUANTIZE.name: QUANTIZE,
    MARGINAL.name: MARGINAL,
}


def method(name: str) -> Method:
    """The registered method ``name`` (UsageError naming the valid ones otherwise)."""
    try:
        return METHODS[name]
    except KeyError:
        raise UsageError(
            f"unknown method {name!r}; choose one of {', '.join(METHODS)}", param="--method"
        ) from None


def with_hypothesis(key: str) -> list[str]:
    """The registered methods whose hypothesis file is recorded as ``inputs.<key>`` (e.g.
    ``"artifact"``: the compressed models ``compress`` writes and ``verify ARTIFACT`` reads)."""
    return [name for name, m in METHODS.items() if m.hypothesis.key == key]


def needs_checkpoint(m: Method) -> bool:
    """Whether ``m`` certifies a checkpoint (every method but ``marginal``: the prior
    conditioned on S)."""
    return m.needs_checkpoint
