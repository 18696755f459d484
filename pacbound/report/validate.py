"""Read a report back and check it against ``schema_v2.json``.

A focused validator for the part of JSON Schema (draft 2020-12) that the shipped schema uses:
``type``, ``const``, ``enum``, ``required``, ``properties``, ``additionalProperties``,
``items``, ``minItems``, ``minLength``, ``maxLength``, ``pattern``, ``minimum``, ``maximum``,
``exclusiveMinimum``, ``exclusiveMaximum``, ``allOf``, ``if``/``then`` and local ``$ref``.
Any other keyword in the schema is an error (so the schema cannot silently outgrow the
validator). A dependency on ``jsonschema`` would buy generality we do not need, and its
messages (a Python repr of the whole failing instance) are not one-line user errors;
``tests/report`` cross-checks this validator on valid and broken documents.

The method names and the per-method results rules are filled in from the method registry
when the schema is loaded (:func:`schema`), so the file cannot drift from it.

A report of schema version 1 (written before every method's ``empirical_risk`` was an object)
is upgraded in memory for reading (:func:`upgrade_v1`: tables and plots of old runs stay
available); ``verify`` refuses it instead (:func:`refuse_older`), since its certificate cannot
be compared field by field with one this version re-derives.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from pacbound.errors import InvalidInputError
from pacbound.report.document import SCHEMA_VERSION, results_hash

SUPPORTED = frozenset(
    {
        "$schema", "$id", "$defs", "title", "description",
        "type", "const", "enum", "required", "properties", "additionalProperties", "items",
        "minItems", "minLength", "maxLength", "pattern", "minimum", "maximum", "exclusiveMinimum",
        "exclusiveMaximum", "allOf", "if", "then", "$ref",
    }
)  # fmt: skip

_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


@cache
def schema() -> dict[str, Any]:
    """The shipped JSON Schema of the current report version, with the registered methods
    filled in: ``$defs.method.enum``, the posterior families (``gaussian_results`` posterior
    ``kind``), for each method ``name`` that has a ``$defs.<name>_results`` rule, that rule
    applied to results of that method, and ``inputs.model`` required for the methods that
    certify a checkpoint."""
    from pacbound.certify.registry import METHODS, needs_checkpoint
    from pacbound.posterior.families import FAMILIES

    name = f"schema_v{SCHEMA_VERSION}.json"
    text = resources.files("pacbound.report").joinpath(name).read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    defs = loaded["$defs"]
    defs["method"]["enum"] = list(METHODS)
    gaussian = defs["gaussian_results"]["properties"]["posterior"]["properties"]
    gaussian["kind"]["enum"] = list(FAMILIES)
    checkpointed = [name for name, m in METHODS.items() if needs_checkpoint(m)]
    loaded["allOf"] = [
        {
            "if": {"properties": {"results": {"properties": {"method": {"enum": checkpointed}}}}},
            "then": {"properties": {"inputs": {"required": ["model"]}}},
        }
    ]
    loaded["properties"]["results"]["allOf"] = [
        {
            "if": {"properties": {"method": {"const": method}}},
            "then": {"$ref": f"#/$defs/{method}_results"},
        }
        for method in METHODS
        if f"{method}_results" in defs
    ]
    return loaded


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def _where(path: tuple[str | int, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or "(top)"


def iter_errors(
    instance: Any, node: dict[str, Any], root: dict[str, Any], path: tuple[str | int, ...] = ()
) -> Iterator[str]:
    """Every violation of ``node`` by ``instance``, as ``"where: what"`` strings."""
    unknown = set(node) - SUPPORTED
    if unknown:
        raise AssertionError(f"schema keyword(s) {sorted(unknown)} not supported by the validator")
    where = _where(path)
    if "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/$defs/"):
            raise AssertionError(f"only local $defs references are supported, got {ref}")
        yield from iter_errors(instance, root["$defs"][ref[len("#/$defs/") :]], root, path)
    if "type" in node:
        names = node["type"] if isinstance(node["type"], list) else [node["type"]]
        if not any(_is_type(instance, t) for t in names):
            yield f"{where}: expected {' or '.join(names)}, got {_describe(instance)}"
            return
    if "const" in node and not _equal(instance, node["const"]):
        yield f"{where}: must be {node['const']!r}, got {_describe(instance)}"
    if "enum" in node and not any(_equal(instance, v) for v in node["enum"]):
        yield f"{where}: must be one of {node['enum']}, got {_describe(instance)}"
    if isinstance(instance, dict):
        yield from _object_errors(instance, node, root, path)
    elif isinstance(instance, list):
        if len(instance) < node.get("minItems", 0):
            yield f"{where}: needs at least {node['minItems']} item(s), got {len(instance)}"
        if "items" in node:
            for i, item in enumerate(instance):
                yield from iter_errors(item, node["items"], root, (*path, i))
    elif isinstance(instance, str):
        if len(instance) < node.get("minLength", 0):
            yield f"{where}: must not be empty"
        if "maxLength" in node and len(instance) > node["maxLength"]:
            yield f"{where}: at most {node['maxLength']} character(s), got {len(instance)}"
        if "pattern" in node and re.search(node["pattern"], instance) is None:
            yield f"{where}: {instance!r} does not match {node['pattern']}"
    elif _is_type(instance, "number"):
        yield from _number_errors(instance, node, where)
    for sub in node.get("allOf", []):
        yield from iter_errors(instance, sub, root, path)
    if "if" in node and not any(True for _ in iter_errors(instance, node["if"], root, path)):
        yield from iter_errors(instance, node.get("then", {}), root, path)


def _object_errors(
    instance: dict[str, Any],
    node: dict[str, Any],
    root: dict[str, Any],
    path: tuple[str | int, ...],
) -> Iterator[str]:
    for key in node.get("required", []):
        if key not in instance:
            yield f"{_where((*path, key))}: missing"
    properties = node.get("properties", {})
    extra = node.get("additionalProperties", True)
    for key, value in instance.items():
        if key in properties:
            yield from iter_errors(value, properties[key], root, (*path, key))
        elif extra is False:
            yield f"{_where((*path, key))}: unexpected field"
        elif isinstance(extra, dict):
            yield from iter_errors(value, extra, root, (*path, key))


def _number_errors(value: float, node: dict[str, Any], where: str) -> Iterator[str]:
    if not math.isfinite(value):
        yield f"{where}: {value!r} is not a finite number"
        return
    if "minimum" in node and value < node["minimum"]:
        yield f"{where}: {value!r} is below the minimum {node['minimum']}"
    if "maximum" in node and value > node["maximum"]:
        yield f"{where}: {value!r} is above the maximum {node['maximum']}"
    if "exclusiveMinimum" in node and value <= node["exclusiveMinimum"]:
        yield f"{where}: {value!r} must be greater than {node['exclusiveMinimum']}"
    if "exclusiveMaximum" in node and value >= node["exclusiveMaximum"]:
        yield f"{where}: {value!r} must be less than {node['exclusiveMaximum']}"


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: ``True`` is not ``1``."""
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def _describe(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return f"{'an object' if isinstance(value, dict) else 'an array'}"
    text = (
        json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    )
    return text if len(text) <= 40 else text[:37] + "..."


def validation_errors(document: Any) -> list[str]:
    """All schema violations of a parsed report ([] when it is a valid current report)."""
    root = schema()
    return list(iter_errors(document, root, root))


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def load_report(path: str | Path, *, upgrade: bool = True) -> dict[str, Any]:
    """Read and validate a report file; any problem raises one-line InvalidInputError (exit 3).

    A report of an older schema version is upgraded in memory (:func:`upgrade_v1`), or with
    ``upgrade=False`` refused (:func:`refuse_older`). The ``results_sha256`` is *not* checked
    here: a report whose numbers were edited is a disagreement for ``pacbound verify`` to
    show (exit 1); see :func:`hash_agrees`.
    """
    file = Path(path)
    try:
        text = file.read_text("utf-8")
    except FileNotFoundError:
        raise InvalidInputError(f"report {file} does not exist") from None
    except IsADirectoryError:
        raise InvalidInputError(f"report {file} is a folder; give a report .json file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read report {file}: {exc}") from None
    if not text.strip():
        raise InvalidInputError(f"report {file} is empty; rerun certify with --output")
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):
            raise InvalidInputError(
                f"report {file} is truncated (the JSON ends early at line {exc.lineno}); "
                "the file was cut off: rerun certify with --output"
            ) from None
        raise InvalidInputError(
            f"report {file} is not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    except ValueError as exc:
        raise InvalidInputError(f"report {file}: {exc} (NaN/Infinity are not allowed)") from None
    if not isinstance(document, dict):
        raise InvalidInputError(f"report {file} is not a pacbound report (not a JSON object)")
    _check_version(document, file)
    if document["schema_version"] < SCHEMA_VERSION:
        if not upgrade:
            refuse_older(document, f"report {file}")
        document = upgrade_v1(document)
    problems = validation_errors(document)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InvalidInputError(
            f"report {file} does not follow report schema v{SCHEMA_VERSION}: {problems[0]}{more}"
        )
    return document


def _check_version(document: dict[str, Any], file: Path) -> None:
    version = document.get("schema_version")
    if version is None:
        raise InvalidInputError(f"report {file} has no schema_version; it is not a pacbound report")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidInputError(f"report {file}: schema_version {version!r} is not valid")
    if version > SCHEMA_VERSION:
        raise InvalidInputError(
            f"report {file} has schema_version {version}, newer than the {SCHEMA_VERSION} this "
            "pacbound reads; upgrade pacbound"
        )


def hash_agrees(document: Mapping[str, Any]) -> bool:
    """Whether ``results_sha256`` is the hash of the ``results`` block as it stands."""
    return bool(results_hash(document["results"]) == document["results_sha256"])


def refuse_older(document: Mapping[str, Any], what: str = "the report") -> None:
    """Refuse (exit 3) a report of an older schema version for re-derivation."""
    version = document["schema_version"]
    if isinstance(version, int) and version < SCHEMA_VERSION:
        raise InvalidInputError(
            f"{what} was written by an older pacbound (report schema v{version}; this one "
            f"writes v{SCHEMA_VERSION}): its certificate cannot be verified field by field; "
            "re-run certify"
        )


def upgrade_v1(document: dict[str, Any]) -> dict[str, Any]:
    """A schema-v1 report in the v2 layout, for reading: a compression method's
    ``empirical_risk`` k/n becomes ``{"estimate", "upper_bound", "errors", "draws"}``.

    ``results_sha256`` is recomputed only when it covered the v1 results, so an edited old
    report still reads as edited (:func:`hash_agrees`)."""
    results = dict(document.get("results") or {})
    risk = results.get("empirical_risk")
    if isinstance(risk, (int, float)) and not isinstance(risk, bool):
        results["empirical_risk"] = {
            "estimate": risk,
            "upper_bound": risk,
            "errors": results.get("errors"),
            "draws": results.get("n"),
        }
    upgraded = {**document, "schema_version": SCHEMA_VERSION, "results": results}
    if isinstance(document.get("results"), dict) and hash_agrees(document):
        upgraded["results_sha256"] = results_hash(results)
    return upgraded
