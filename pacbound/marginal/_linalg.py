"""Cholesky factors that fail loudly: a matrix that is not numerically positive definite
raises :class:`~pacbound.errors.NumericalError` naming the jitter and the smallest
eigenvalue (computed for the message only, and only when n is small enough to afford it)."""

from __future__ import annotations

import numpy as np
import scipy.linalg
from numpy.typing import NDArray

from pacbound.errors import NumericalError

#: Largest n for which a failed factorisation computes the smallest eigenvalue for its message.
EIGEN_HINT_MAX_N = 4000


def cholesky_lower(
    a: NDArray, *, what: str, jitter: float | None = None, overwrite: bool = False
) -> NDArray[np.float64]:
    """Lower Cholesky factor L (a = L Lᵀ) of a symmetric matrix, or NumericalError.

    ``overwrite=True`` lets LAPACK reuse ``a``'s memory (its content is then undefined).
    """
    a = np.asarray(a, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise NumericalError(f"{what} contains NaN or Inf")
    try:
        factor = scipy.linalg.cholesky(a, lower=True, check_finite=False, overwrite_a=overwrite)
    except np.linalg.LinAlgError as exc:
        raise NumericalError(_message(None if overwrite else a, what, jitter)) from exc
    if not np.all(np.isfinite(np.diag(factor))) or np.any(np.diag(factor) <= 0):
        raise NumericalError(_message(None if overwrite else a, what, jitter))
    return np.asarray(factor)


def _message(a: NDArray | None, what: str, jitter: float | None) -> str:
    msg = f"{what} is not positive definite"
    if jitter is not None:
        msg += f" after the jitter {jitter:g}"
    if a is not None and a.shape[0] <= EIGEN_HINT_MAX_N:
        smallest = float(np.linalg.eigvalsh(a)[0])
        msg += f" (smallest eigenvalue {smallest:.3g})"
    # never a jitter derived from this matrix: the jitter is part of the prior, and one
    # chosen after seeing the data would be a prior chosen after seeing the data
    return msg + (
        "; the jitter is part of the prior: fix a larger one (or a grid of them, paid in δ) "
        "before seeing the data, not from this matrix"
    )
