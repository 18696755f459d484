"""Train the built-in row-sequential transformer (28 tokens of 28 pixels) on the bundled MNIST.

Saves ``init.safetensors`` (before training: the centre of a data-independent prior),
``final.safetensors`` and ``training.json`` in ``--out``; both are state dicts of
``pacbound.models.transformer`` (``--arch transformer``). Defaults: AdamW, lr 4e-3 with cosine
decay, batch 128, 10 epochs, seed 0.

    python examples/train_mnist_transformer.py --out runs/transformer
    python examples/train_mnist_transformer.py --out runs/tf-quick --n 10000 --epochs 1
    pacbound certify runs/transformer/final.safetensors --arch transformer \\
        --init runs/transformer/init.safetensors --data examples/data/mnist
"""

from __future__ import annotations

from _training import main, parser

#: The training recipe (also used by benchmarks/bench_any_architecture.py).
DEFAULTS = {"epochs": 10, "lr": 4e-3, "optimizer": "adamw"}

if __name__ == "__main__":
    main("transformer", parser(__doc__.splitlines()[0], **DEFAULTS).parse_args())
