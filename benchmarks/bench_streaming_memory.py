"""Peak memory of ``certify`` on a streamed data set: MNIST ×10 replicated vs MNIST ×1.

Writes MNIST train (60000 uint8 images) and ten copies of it (600000 images, ~470 MB) as
``x.npy``/``y.npy`` folders in a temporary directory, trains a small 784-100-10 MLP for one
epoch, then runs ``pacbound certify`` (isotropic Gaussian posterior around it, init prior,
one Monte-Carlo pass, a short σ search) on each folder in a fresh child process that reports
its own peak RSS (VmHWM from /proc/self/status, not inherited from this process). Held in
memory as float32, ×10 would take 1.9 GB for the features alone; streamed, the peak should
stay close to that of ×1. Prints one JSON object. Linux only.

Run: ``.venv/bin/python benchmarks/bench_streaming_memory.py``
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO / "examples" / "data" / "mnist"
COPIES = 10
HIDDEN = 100
ARCH_KWARGS = json.dumps({"in_features": 784, "hidden": [HIDDEN], "num_classes": 10})

_CHILD = """
import json, sys, time
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))
from pacbound.cli.main import cli
baseline = status("VmHWM:")
start = time.perf_counter()
try:
    cli.main(sys.argv[1:], standalone_mode=False)
except SystemExit:
    pass
seconds = time.perf_counter() - start
print(json.dumps({"baseline_kib": baseline, "peak_kib": status("VmHWM:"), "seconds": seconds}))
"""


def write_folder(folder: Path, x: np.ndarray, y: np.ndarray, copies: int) -> None:
    """``copies`` copies of (x, y) as x.npy/y.npy, written block by block (no big array)."""
    folder.mkdir()
    n = x.shape[0]
    features = np.lib.format.open_memmap(
        folder / "x.npy", mode="w+", dtype=np.uint8, shape=(copies * n, *x.shape[1:])
    )
    for c in range(copies):
        features[c * n : (c + 1) * n] = x
    features.flush()
    del features
    np.save(folder / "y.npy", np.tile(y.astype(np.uint8), copies))


def train_checkpoint(x: np.ndarray, y: np.ndarray, root: Path) -> None:
    """One epoch of SGD on normalized MNIST; saves init.safetensors and final.safetensors."""
    import torch
    from safetensors.torch import save_file

    from pacbound.models import mlp

    torch.manual_seed(0)
    model = mlp(in_features=784, hidden=[HIDDEN], num_classes=10)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, root / "init.safetensors")
    xt = torch.from_numpy(np.array(x)).float().div_(255).sub_(0.1307).div_(0.3081).unsqueeze(1)
    yt = torch.from_numpy(y.astype(np.int64))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    perm = torch.randperm(len(yt), generator=torch.Generator().manual_seed(0))
    for start in range(0, len(yt), 128):
        idx = perm[start : start + 128]
        loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, root / "final.safetensors")


def certify_in_child(root: Path, data: Path) -> dict[str, Any]:
    report = root / f"report-{data.name}.json"
    args = [
        "certify",
        str(root / "final.safetensors"),
        "--arch",
        "mlp",
        "--arch-kwargs",
        ARCH_KWARGS,
        "--init",
        str(root / "init.safetensors"),
        "--data",
        str(data),
        "--normalize",
        "mnist",
        "--mc-passes",
        "1",
        "--batch-size",
        "1024",
        "--quiet",
        "--output",
        str(report),
    ]
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, check=True
    )
    measured: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    results = json.loads(report.read_text())["results"]
    return {
        "rows": results["n"],
        "peak_rss_mib": round(measured["peak_kib"] / 1024, 1),
        "baseline_rss_mib": round(measured["baseline_kib"] / 1024, 1),
        "seconds": round(measured["seconds"], 1),
        "bound": results["bound"],
        "empirical_risk_estimate": results["empirical_risk"]["estimate"],
        "x_npy_mib": round((data / "x.npy").stat().st_size / 2**20, 1),
    }


def main() -> None:
    from pacbound.io.idx import read_idx

    x = read_idx(MNIST / "train-images-idx3-ubyte.gz", ndim=3)
    y = read_idx(MNIST / "train-labels-idx1-ubyte.gz", ndim=1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        train_checkpoint(x, y, root)
        write_folder(root / "mnist_x1", x, y, 1)
        write_folder(root / f"mnist_x{COPIES}", x, y, COPIES)
        prepare = time.perf_counter() - start
        runs = {f"x{c}": certify_in_child(root, root / f"mnist_x{c}") for c in (1, COPIES)}
    big = runs[f"x{COPIES}"]
    print(
        json.dumps(
            {
                "benchmark": "certify on a streamed x.npy folder (isotropic, init prior, K=1)",
                "model": f"mlp 784-{HIDDEN}-10, one epoch of SGD",
                "prepare_seconds": round(prepare, 1),
                "runs": runs,
                "float32_features_in_memory_mib_x10": round(big["rows"] * 784 * 4 / 2**20, 1),
                "peak_ratio_x10_over_x1": round(
                    big["peak_rss_mib"] / runs["x1"]["peak_rss_mib"], 3
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
