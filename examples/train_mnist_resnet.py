"""Train the built-in small ResNet (BatchNorm, residual blocks) on the bundled MNIST.

Saves ``init.safetensors`` (before training: the centre of a data-independent prior),
``final.safetensors`` and ``training.json`` in ``--out``; both are state dicts of
``pacbound.models.resnet`` (``--arch resnet``), BatchNorm running statistics included.
Defaults: SGD with momentum 0.9, lr 0.05 with cosine decay, batch 128, 5 epochs, seed 0.

    python examples/train_mnist_resnet.py --out runs/resnet
    python examples/train_mnist_resnet.py --out runs/resnet-quick --n 10000 --epochs 1
    pacbound certify runs/resnet/final.safetensors --arch resnet \\
        --init runs/resnet/init.safetensors --data examples/data/mnist
"""

from __future__ import annotations

from _training import main, parser

#: The training recipe (also used by benchmarks/bench_any_architecture.py).
DEFAULTS = {"epochs": 5, "lr": 0.05, "optimizer": "sgd"}

if __name__ == "__main__":
    main("resnet", parser(__doc__.splitlines()[0], **DEFAULTS).parse_args())
