"""Training the data-dependent prior mean: schedule, image-shift augmentation, bad recipes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pacbound.errors import InvalidInputError
from pacbound.posterior.priors import PriorTrainingRecipe, random_shift, train_prior_mean


def test_random_shift_rolls_each_image_by_at_most_k_pixels() -> None:
    x = torch.arange(6 * 1 * 7 * 7, dtype=torch.float32).reshape(6, 1, 7, 7)
    out = random_shift(x, 2, torch.Generator().manual_seed(3))
    assert out.shape == x.shape
    offsets = set()
    for i in range(6):
        found = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(out[i], torch.roll(x[i], (dy, dx), dims=(1, 2)))
        ]
        assert len(found) == 1
        offsets.add(found[0])
    assert len(offsets) > 1  # per-image offsets, not one for the batch
    again = random_shift(x, 2, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)
    assert random_shift(x, 0, torch.Generator()) is x


def _task() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean(dim=(1, 2)) > x[:, 0, 4:].mean(dim=(1, 2))).long()
    return x, y


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 2))


def test_prior_training_is_deterministic_and_the_recipe_matters() -> None:
    x, y = _task()
    cpu = torch.device("cpu")
    runs = {}
    for name, recipe in {
        "cosine": PriorTrainingRecipe(epochs=2, lr=0.1, batch_size=50),
        "cosine_again": PriorTrainingRecipe(epochs=2, lr=0.1, batch_size=50),
        "constant": PriorTrainingRecipe(epochs=2, lr=0.1, batch_size=50, lr_schedule="constant"),
        "shifted": PriorTrainingRecipe(epochs=2, lr=0.1, batch_size=50, augment_shift=1),
    }.items():
        model = train_prior_mean(_model(), x, y, recipe, device=cpu)
        runs[name] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.equal(runs["cosine"], runs["cosine_again"])
    assert not torch.equal(runs["cosine"], runs["constant"])
    assert not torch.equal(runs["cosine"], runs["shifted"])


@pytest.mark.parametrize(
    ("recipe", "x_shape", "match"),
    [
        (PriorTrainingRecipe(augment_shift=2), (10, 64), "need N×C×H×W"),
        (PriorTrainingRecipe(augment_shift=8), (10, 1, 8, 8), "not smaller than the images"),
        (PriorTrainingRecipe(augment_shift=-1), (10, 1, 8, 8), "must be >= 0"),
        (PriorTrainingRecipe(lr_schedule="step"), (10, 1, 8, 8), "unknown prior learning-rate"),  # type: ignore[arg-type]
        (PriorTrainingRecipe(lr=0.0), (10, 1, 8, 8), "--prior-lr"),
    ],
)
def test_bad_recipes_are_refused_before_training(
    recipe: PriorTrainingRecipe, x_shape: tuple[int, ...], match: str
) -> None:
    x = torch.zeros(x_shape)
    y = torch.zeros(x_shape[0], dtype=torch.long)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(InvalidInputError, match=match):
        train_prior_mean(model, x, y, recipe, device=torch.device("cpu"))
    for a, b in zip(before, model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_shift_augmentation_works_on_streamed_features(tmp_path: Path) -> None:
    """A memory-mapped x.npy folder (LazyFeatures, no .dim()) trains like in-memory data."""
    import numpy as np

    from pacbound.io import load_dataset

    x, y = _task()
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "y.npy", y.numpy())
    streamed = load_dataset(tmp_path)
    recipe = PriorTrainingRecipe(epochs=1, lr=0.1, batch_size=50, augment_shift=1)
    a = train_prior_mean(_model(), streamed.x, streamed.y, recipe, device=torch.device("cpu"))
    b = train_prior_mean(_model(), x, y, recipe, device=torch.device("cpu"))
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
