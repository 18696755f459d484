"""Dziugaite & Roy (2017), "T-600": binary MNIST (0-4 vs 5-9), 784-600-2 ReLU MLP.

Trained by SGD from a saved init (5 epochs, lr 0.01, momentum 0.9); prior centred at the
init (no data-dependent prior); diagonal Gaussian posterior trained on the PAC-Bayes-kl
surrogate (60 epochs; SGD on the means, lr 0.1, momentum 0.9; bounded cross-entropy with
p_min = 0.1; the epoch with the smallest estimated bound kept); δ = 0.025 for the
PAC-Bayes inequality and δ′ = 0.01 for the Monte-Carlo bound, as in the paper.
Published: bound 0.161, stochastic network test error 0.034.

    python benchmarks/bench_dziugaite_roy_t600.py          # prints one JSON object
"""

from __future__ import annotations

import argparse

from _mnist_gaussian import add_common_arguments, emit, run

from pacbound.posterior.priors import PriorMean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.set_defaults(posterior_epochs=60, posterior_lr=0.1, p_min=0.1)
    args = parser.parse_args()
    emit(
        run(
            args,
            name="dziugaite-roy-2017-T-600",
            hidden=[600],
            label_map="0-4:0,5-9:1",
            prior=PriorMean.INIT,
            delta=0.035,
            mc_delta=0.01,
            published={"bound": 0.161, "snn_test_error": 0.034},
        )
    )


if __name__ == "__main__":
    main()
