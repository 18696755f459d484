"""An embedding table drawn from a diagonal Gaussian, independently per example.

An example's output depends only on the rows it looks up, so a per-example draw of the whole
table restricted to those rows is a draw of exactly those rows (the rows are independent
coordinates of θ). :class:`GaussianEmbedding` therefore draws, for every example, **one**
row per distinct index it uses (a token used twice in one example sees the same draw twice),
independently across examples (MATH.md §10). Example i's k-th distinct row (in increasing
order) takes the k-th of i's noise vectors, one per index position, keyed by i's place in the
data set (:mod:`~pacbound.posterior.streams`): memory ∝ the output's size.

The forward of ``nn.Embedding`` is a plain lookup for every ``padding_idx``,
``scale_grad_by_freq`` and ``sparse`` (they change gradients only), so these are reproduced
exactly; ``max_norm`` renormalizes the table in place during forward and is refused by the
registry (:mod:`pacbound.posterior.samplers`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pacbound.errors import InvalidInputError
from pacbound.posterior.layers import GaussianModule


class GaussianEmbedding(GaussianModule):
    """An ``nn.Embedding`` whose rows ~ N(μ, diag σ²), one draw per distinct row per example."""

    def __init__(self, base: nn.Embedding, log_sigma_init: float) -> None:
        super().__init__(base.weight, None, log_sigma_init)
        self.num_embeddings = base.num_embeddings
        self.embedding_dim = base.embedding_dim
        self.padding_idx = base.padding_idx

    def forward(self, x: Tensor) -> Tensor:
        self._enter(x)
        if self.mode == "mean":
            return F.embedding(x, self.weight_mu, self.padding_idx)
        if self.mode == "shared":
            table = self._shared_draw(self.weight_mu, self.weight_log_sigma)
            return F.embedding(x, table, self.padding_idx)
        if x.dim() == 0:
            raise InvalidInputError(
                f"module {self.layer_name!r} receives a scalar index: there is no batch "
                "dimension to draw rows per example"
            )
        if (
            x.is_floating_point()
            or x.is_complex()
            or (x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.num_embeddings))
        ):
            raise InvalidInputError(
                f"module {self.layer_name!r} receives indices outside 0…"
                f"{self.num_embeddings - 1} (or not integers)"
            )
        b = int(x.shape[0])
        index = x.reshape(b, -1)
        example = torch.arange(b, device=x.device).unsqueeze(1).expand_as(index)
        # One key per distinct (example, row) pair: each is drawn once.
        keys = example * self.num_embeddings + index
        pairs, where = torch.unique(keys.reshape(-1), return_inverse=True)
        rows = pairs % self.num_embeddings
        owner = pairs // self.num_embeddings
        mu, sigma = self.weight_mu[rows], torch.exp(self.weight_log_sigma[rows])
        drawn = mu + sigma * self._row_noise(owner, b, int(index.shape[1]), mu)
        return drawn[where].reshape(*x.shape, self.embedding_dim)

    def _row_noise(self, owner: Tensor, b: int, positions: int, like: Tensor) -> Tensor:
        """The noise of every distinct (example, row) pair (sorted by example, then row):
        example i (of ``b``) takes for its k-th distinct row the k-th of its ``positions``
        noise vectors, so each example's draws depend on its own key and indices only."""
        counts = torch.bincount(owner, minlength=b)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(owner.shape[0], device=owner.device) - starts[owner]
        shape = torch.Size((positions, self.embedding_dim))
        (noise,) = self._example_noise(f"{self.slot_name('weight')}#rows", [shape], b, 0, like)
        return noise[owner, slot]

    def per_example_elements(self) -> int:
        return 0  # rows are drawn per use, within the output's own size
