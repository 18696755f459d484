"""Turning ``--arch`` and ``--arch-kwargs`` into an ``nn.Module``.

``--arch`` is a built-in name (a key of ``models.BUILTINS``: ``mlp``, ``resnet``, …) or
``package.module:factory``, imported from the current directory or the Python path.
``--arch-kwargs`` is a JSON object passed to the factory as keyword arguments.
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.nn.parameter import is_lazy

from pacbound.errors import InvalidInputError, PacboundError
from pacbound.models import BUILTINS

_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass(frozen=True)
class ArchitectureSpec:
    """A parsed ``--arch``: a built-in name, or a module path and a factory attribute."""

    text: str
    module: str | None
    attribute: str

    @property
    def builtin(self) -> bool:
        return self.module is None


def parse_arch(text: str) -> ArchitectureSpec:
    """Parse ``--arch``: ``NAME`` of a built-in, or ``package.module:factory``.

    >>> parse_arch("mypkg.nets:small")
    ArchitectureSpec(text='mypkg.nets:small', module='mypkg.nets', attribute='small')
    """
    text = text.strip()
    if ":" not in text:
        if text in BUILTINS:
            return ArchitectureSpec(text, None, text)
        raise InvalidInputError(
            f"--arch {text!r} is neither a built-in ({', '.join(BUILTINS)}) nor of the form "
            "package.module:factory; see 'pacbound inspect --help'",
            param="--arch",
        )
    module, _, attribute = text.partition(":")
    if not _DOTTED.match(module) or not _DOTTED.match(attribute):
        raise InvalidInputError(
            f"--arch {text!r}: expected package.module:factory with Python identifiers, "
            "e.g. mynets.mnist:make_model",
            param="--arch",
        )
    return ArchitectureSpec(text, module, attribute)


def parse_arch_kwargs(text: str | None) -> dict[str, Any]:
    """Parse ``--arch-kwargs`` as a JSON object (``None`` or empty gives ``{}``).

    >>> parse_arch_kwargs('{"hidden": [600, 600], "num_classes": 2}')
    {'hidden': [600, 600], 'num_classes': 2}
    """
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(
            f"--arch-kwargs is not valid JSON ({exc.msg} at character {exc.pos}); write an "
            """object such as '{"hidden": [600], "num_classes": 2}' (double quotes)""",
            param="--arch-kwargs",
        ) from None
    if not isinstance(value, dict):
        raise InvalidInputError(
            f"--arch-kwargs must be a JSON object of keyword arguments, got "
            f"{type(value).__name__} {text.strip()!r}",
            param="--arch-kwargs",
        )
    return value


@contextmanager
def _cwd_on_path() -> Iterator[None]:
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added:
            sys.path.remove(cwd)


def resolve_factory(spec: ArchitectureSpec) -> Callable[..., Any]:
    """The factory ``spec`` names, imported from the current directory or ``sys.path``."""
    if spec.module is None:
        return BUILTINS[spec.attribute].factory
    with _cwd_on_path():
        try:
            module = importlib.import_module(spec.module)
        except ModuleNotFoundError as exc:
            missing = exc.name or spec.module
            if spec.module == missing or spec.module.startswith(missing + "."):
                raise InvalidInputError(
                    f"--arch {spec.text}: no module named {missing!r} in the current directory "
                    "or on the Python path; run from the folder that holds it or add it to "
                    "PYTHONPATH",
                    param="--arch",
                ) from None
            raise InvalidInputError(
                f"--arch {spec.text}: importing {spec.module} failed because it needs "
                f"{missing!r}, which is not installed; install it",
                param="--arch",
            ) from None
        except Exception as exc:  # user code: anything can happen at import time
            raise InvalidInputError(
                f"--arch {spec.text}: importing {spec.module} raised "
                f"{type(exc).__name__}: {exc}; fix that module",
                param="--arch",
            ) from None
    target: Any = module
    for part in spec.attribute.split("."):
        if not hasattr(target, part):
            names = [n for n in dir(target) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise InvalidInputError(
                f"--arch {spec.text}: {spec.module} has no attribute {part!r}{hint}; name the "
                "function that builds the model",
                param="--arch",
            )
        target = getattr(target, part)
    if not callable(target):
        raise InvalidInputError(
            f"--arch {spec.text}: {spec.attribute} is a {type(target).__name__}, not a "
            "callable factory; point --arch to a function or class that returns an nn.Module",
            param="--arch",
        )
    return target


def build_module(spec: ArchitectureSpec, kwargs: Mapping[str, Any]) -> nn.Module:
    """Call the factory with ``kwargs`` and check that it returns an ``nn.Module``."""
    factory = resolve_factory(spec)
    try:
        module = factory(**kwargs)
    except PacboundError:
        raise
    except TypeError as exc:
        raise InvalidInputError(
            f"--arch {spec.text} rejected --arch-kwargs {json.dumps(dict(kwargs))} "
            f"({exc}); pass only the keyword arguments the factory accepts",
            param="--arch-kwargs",
        ) from None
    except Exception as exc:  # user code: the factory may raise anything
        raise InvalidInputError(
            f"--arch {spec.text}: the factory raised {type(exc).__name__}: {exc}; check "
            "--arch-kwargs and the factory",
            param="--arch",
        ) from None
    if not isinstance(module, nn.Module):
        raise InvalidInputError(
            f"--arch {spec.text} returned a {type(module).__name__}, not a torch.nn.Module; "
            "the factory must build and return the model",
            param="--arch",
        )
    check_real_parameters(module, f"--arch {spec.text}", param="--arch")
    return module


def check_real_parameters(module: nn.Module, owner: str, *, param: str | None = None) -> None:
    """Refuse a model whose parameters are not all materialised real floating-point tensors.

    A lazy module's shapes are fixed only by its first forward pass; a complex parameter is
    two real coordinates per entry that the Gaussian draws, the KL and the codebooks would
    treat as one real number; an integer parameter cannot be drawn or quantized (a buffer is
    the place for integer state). Raises :class:`InvalidInputError` naming the tensors.
    """
    lazy = [name for name, t in (*module.named_parameters(), *module.named_buffers()) if is_lazy(t)]
    if lazy:
        raise InvalidInputError(
            f"{owner} has lazy modules whose shapes are not set yet ({', '.join(lazy[:4])}): "
            "build the layers with explicit sizes (nn.Linear instead of nn.LazyLinear), or run "
            "one forward pass on a dummy input in the factory",
            param=param,
        )
    odd = [f"{n} ({p.dtype})" for n, p in module.named_parameters() if not p.is_floating_point()]
    if odd:
        raise InvalidInputError(
            f"{owner} has parameters that are not real floating-point tensors: "
            f"{', '.join(odd[:4])}; pacbound certifies real parameters only: keep integer "
            "state in buffers (register_buffer) and store a complex weight as a real one "
            "(torch.view_as_real) that forward turns into a complex view",
            param=param,
        )
