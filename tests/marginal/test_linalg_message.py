"""A failed Cholesky factorisation never suggests a jitter derived from the failing matrix
(the jitter is part of the prior: one chosen after seeing S is an unpaid choice)."""

from __future__ import annotations

import numpy as np
import pytest

from pacbound.errors import NumericalError
from pacbound.marginal._linalg import cholesky_lower


def test_the_message_names_the_jitter_and_suggests_no_value_from_the_matrix() -> None:
    singular = np.array([[1.0, 2.0], [2.0, 1.0]]) * 7.0  # indefinite, mean diagonal 7
    with pytest.raises(NumericalError) as caught:
        cholesky_lower(singular, what="kernel", jitter=1e-9)
    message = str(caught.value)
    assert "kernel is not positive definite after the jitter 1e-09" in message
    assert "before seeing the data" in message
    assert "mean diagonal" not in message and "7e-06" not in message
