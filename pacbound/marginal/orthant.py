"""P(U) as a Gaussian orthant probability: the constraints, EP, and the certified lower bound.

The random sampler keeps a function drawn from the prior GP when it fits the n training labels.
Binary (labels in {0, 1}, prediction 1 iff f(x) > 0): with s_i = 2y_i − 1 and f ~ N(0, K),
U = {s_i f(x_i) > 0 ∀ i}, so P(U) = P(g > 0) with g = D f ~ N(0, D K D), D = diag(s).
Multi-class (prediction argmax_c f_c(x), f_1..f_C i.i.d. GPs with kernel K): U = {g > 0} with
the n(C − 1) differences g_{i,c} = f_{y_i}(x_i) − f_c(x_i), c ≠ y_i, whose covariance is
Cov(g_{i,c}, g_{j,c'}) = K_ij (1[y_i = y_j] − 1[y_i = c'] − 1[c = y_j] + 1[c = c']).
Rows are ordered example by example, the classes c ≠ y_i increasing within an example.
(Ties f_c = f_{y_i} have probability 0, so strict and weak inequalities agree.)

EP (:func:`ep_orthant`) gives an approximation of ln P(U), for information only; the
certificate uses :func:`certified_log_orthant`, a lower bound that holds with probability
≥ 1 − δ_IS over its own random draws.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from pacbound.errors import InvalidInputError
from pacbound.marginal.ep import EPResult, ep_orthant
from pacbound.marginal.ghk import OrthantLowerBound, certified_log_orthant

__all__ = [
    "EPResult",
    "OrthantLowerBound",
    "certified_log_orthant",
    "constraint_covariance",
    "ep_orthant",
]


def _check_labels(k: NDArray, labels: NDArray, classes: int) -> NDArray[np.int64]:
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise InvalidInputError(f"kernel matrix must be square, got {k.shape}", param="kernel")
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != k.shape[0]:
        raise InvalidInputError(
            f"need one label per kernel row: {y.shape} labels for {k.shape[0]} rows",
            param="labels",
        )
    if classes < 2:
        raise InvalidInputError(f"classes must be ≥ 2, got {classes}", param="classes")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= classes):
        raise InvalidInputError(
            f"labels must be integers in [0, {classes - 1}] (use a label map)", param="labels"
        )
    return y.astype(np.int64)


def constraint_covariance(K: NDArray, labels: NDArray, classes: int) -> NDArray[np.float64]:
    """Covariance of the constraint variables g, P(U) = P(g > 0) (module docstring).

    >>> constraint_covariance(np.array([[1.0, 0.5], [0.5, 1.0]]), np.array([0, 1]), 2)
    array([[ 1. , -0.5],
           [-0.5,  1. ]])
    """
    k = np.asarray(K, dtype=np.float64)
    y = _check_labels(k, labels, classes)
    if classes == 2:
        s = 2.0 * y - 1.0
        out = k * s[:, None]
        out *= s[None, :]
        return out
    n = y.size
    rows_i = np.repeat(np.arange(n), classes - 1)
    others = np.array([[c for c in range(classes) if c != yi] for yi in y]).reshape(-1)
    yi = y[rows_i]
    sign = (
        (yi[:, None] == yi[None, :]).astype(np.float64)
        - (yi[:, None] == others[None, :])
        - (others[:, None] == yi[None, :])
        + (others[:, None] == others[None, :])
    )
    return k[np.ix_(rows_i, rows_i)] * sign
