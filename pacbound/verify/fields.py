"""Field-by-field comparison of a reported results block with a re-derived one.

A results block is compared **leaf by leaf**: every number, string, boolean or null, named by
its dotted path (``prior.scale``, ``delta_budget.parts[1].delta``). A leaf present on one side
only disagrees (shown as :data:`ABSENT` on the other side), so a forged field cannot be added
or removed either. The fields that describe *how* a hypothesis was chosen (a method's
``choice_fields``: search histories, training curves) are skipped with everything below them;
they are not part of the certificate and ``verify`` does not redo the search.

A method whose recomputation agrees only to a tolerance (``float_rel_tol``: LAPACK rounding
that depends on the BLAS thread count) names its **bound-side** leaves (``bound_fields``:
``"upper"`` for a bound, ``"lower"`` for a certified lower bound) and pays a margin inside
its certificate; those leaves are compared one-sidedly (:func:`on_safe_side`): at most
``unsafe_rel_tol`` (≪ the margin) on the unsafe side of the recomputed value, at most
``rel_tol`` on the safe side. A bound forged lower (or a lower bound forged higher) by more
than that floating-point slack is refused, and every accepted one still lies on the safe side
of the certificate verify computed. Leaves that no LAPACK call touches (the δ budget, ln(2√n/δ))
are named ``"exact"`` and compared bit for bit whatever the tolerance. A side named for a
field applies to every leaf below it (``delta_budget`` covers ``delta_budget.parts[1].delta``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any


class _Absent:
    """The other side of a leaf present on one side only: equal to nothing (not even a
    forged string spelled like it), shown as ``(absent)``."""

    def __repr__(self) -> str:
        return "(absent)"


#: What a leaf present on one side only is on the other.
ABSENT: Any = _Absent()

#: A leaf's path: object keys and array indices, never joined before comparing (a key
#: spelled ``"heldout.bound"`` is not the leaf ``bound`` of ``heldout``).
Path = tuple[str | int, ...]


def same(a: Any, b: Any, rel_tol: float = 0.0) -> bool:
    """JSON equality: ``True`` is not ``1``, NaN and :data:`ABSENT` agree with nothing; two
    finite floats within ``rel_tol`` (relative, of the larger) agree when it is > 0."""
    if a is ABSENT or b is ABSENT:
        return False
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return False
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if rel_tol > 0 and type(a) is float and type(b) is float:
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=0.0)
    return bool(a == b)


#: The sides of a bound-side leaf: ``"upper"`` (a bound: reporting it lower is unsafe) and
#: ``"lower"`` (a certified lower bound: reporting it higher is unsafe); ``"exact"``: a leaf
#: compared bit for bit although the method has a float tolerance.
SIDES = ("upper", "lower", "exact")


def on_safe_side(
    reported: Any, recomputed: Any, side: str, rel_tol: float, unsafe_rel_tol: float
) -> bool:
    """Whether a bound-side leaf agrees: two finite floats agree when the reported one lies
    at most ``unsafe_rel_tol`` (relative, of the larger) on the unsafe side of the recomputed
    one and at most ``rel_tol`` on the safe side; anything else as :func:`same` (exactly).

    >>> on_safe_side(0.3 * (1 + 1e-10), 0.3, "upper", 1e-9, 1e-12)
    True
    >>> on_safe_side(0.3 * (1 - 1e-10), 0.3, "upper", 1e-9, 1e-12)
    False
    """
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    if side == "exact" or type(reported) is not float or type(recomputed) is not float:
        return same(reported, recomputed)
    if not (math.isfinite(reported) and math.isfinite(recomputed)):
        return same(reported, recomputed)
    scale = max(abs(reported), abs(recomputed))
    excess = reported - recomputed if side == "upper" else recomputed - reported
    return -unsafe_rel_tol * scale <= excess <= rel_tol * scale


@dataclass(frozen=True)
class FieldCheck:
    """One re-derived field: what the report says, what was recomputed, whether they agree
    (within ``rel_tol``; one-sidedly when ``side`` names a bound-side leaf)."""

    field: str
    reported: Any
    recomputed: Any
    rel_tol: float = 0.0  # the method's ``float_rel_tol``
    side: str | None = None  # "upper"/"lower": a bound-side leaf (``bound_fields``)
    unsafe_rel_tol: float = 0.0

    @property
    def agree(self) -> bool:
        if self.side is not None and self.reported is not ABSENT and self.recomputed is not ABSENT:
            return on_safe_side(
                self.reported, self.recomputed, self.side, self.rel_tol, self.unsafe_rel_tol
            )
        return same(self.reported, self.recomputed, self.rel_tol)

    def to_dict(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "reported": _shown(self.reported),
            "recomputed": _shown(self.recomputed),
            "agree": self.agree,
        }


def _shown(value: Any) -> Any:
    return repr(ABSENT) if value is ABSENT else value


@dataclass(frozen=True)
class Verification:
    """All field checks of one report (or of one artifact against a report)."""

    method: str
    checks: tuple[FieldCheck, ...]

    @property
    def agree(self) -> bool:
        return all(c.agree for c in self.checks)

    @property
    def disagreeing(self) -> list[str]:
        return [c.field for c in self.checks if not c.agree]

    def recomputed(self, field: str) -> Any:
        """The recomputed value of ``field`` (KeyError when it was not checked)."""
        for check in self.checks:
            if check.field == field:
                return check.recomputed
        raise KeyError(field)

    def extended(self, checks: tuple[FieldCheck, ...] | list[FieldCheck]) -> Verification:
        return Verification(self.method, (*self.checks, *checks))

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "agree": self.agree,
            "fields": [c.to_dict() for c in self.checks],
        }


def leaves(block: Any, prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
    """(path, value) of every leaf of a JSON value; an empty object or array is a leaf
    itself (so ``{}`` and a missing field differ)."""
    if isinstance(block, Mapping) and block:
        for key, value in block.items():
            yield from leaves(value, (*prefix, str(key)))
    elif isinstance(block, (list, tuple)) and block:
        for i, value in enumerate(block):
            yield from leaves(value, (*prefix, i))
    else:
        yield prefix, block


def dotted(path: Path) -> str:
    """``("delta_budget", "parts", 1, "delta")`` → ``delta_budget.parts[1].delta`` (a key
    that itself holds ``.`` or ``[`` is quoted, so two different paths never print alike)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if part and not set(part) & set('.[]"') else f'"{part}"'
            out += f".{name}" if out else name
    return out


def parse_dotted(field: str) -> Path:
    """The path of a choice field written as ``posterior.isotropic_search`` (plain keys)."""
    return tuple(field.split("."))


def is_under(path: Path, fields: tuple[str, ...]) -> bool:
    """Whether ``path`` is one of ``fields`` (dotted, plain keys) or lies below one of them."""
    return any(path[: len(f)] == f for f in map(parse_dotted, fields))


def compare_results(
    reported: Mapping[str, Any],
    recomputed: Mapping[str, Any],
    *,
    skip: tuple[str, ...] = (),
    rel_tol: float = 0.0,
    sides: Mapping[str, str] | None = None,
    unsafe_rel_tol: float = 0.0,
) -> list[FieldCheck]:
    """Leaf-by-leaf checks of two results blocks, in the reported block's order (then the
    leaves only the recomputed one has), skipping ``skip`` and everything below it; float
    leaves agree within ``rel_tol`` (0: exactly), the bound-side leaves ``sides`` names
    (dotted, plain keys → ``"upper"``/``"lower"``) one-sidedly (:func:`on_safe_side`)."""
    side_of = {parse_dotted(f): side for f, side in (sides or {}).items()}
    for side in side_of.values():
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    mine = {p: v for p, v in leaves(reported) if not is_under(p, skip)}
    theirs = {p: v for p, v in leaves(recomputed) if not is_under(p, skip)}
    checks = [
        FieldCheck(dotted(p), v, theirs.get(p, ABSENT), rel_tol, _side(p, side_of), unsafe_rel_tol)
        for p, v in mine.items()
    ]
    checks += [FieldCheck(dotted(p), ABSENT, v) for p, v in theirs.items() if p not in mine]
    return checks


def _side(path: Path, side_of: Mapping[Path, str]) -> str | None:
    """The side named for ``path`` or for the nearest field above it (None: none)."""
    for length in range(len(path), 0, -1):
        if path[:length] in side_of:
            return side_of[path[:length]]
    return None
