"""pacbound: certificates of generalization for trained PyTorch models.

The pure-math layer lives in :mod:`pacbound.bounds` and does not import torch.
"""

from pacbound._version import __version__
from pacbound.errors import InvalidInputError, NumericalError, PacboundError

__all__ = ["InvalidInputError", "NumericalError", "PacboundError", "__version__"]
