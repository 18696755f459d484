"""Loading benchmarks: MNIST train from gzipped IDX, and the memory of a 100 MB checkpoint.

Prints one JSON object. Run with ``.venv/bin/python benchmarks/bench_load_mnist.py``. The
checkpoint part runs in a child process so that its peak RSS is its own: a 100 MB model loaded
with one copy in memory peaks near 100 MB above the interpreter's baseline, two copies
near 200. Linux only (reads VmHWM from /proc/self/status).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO / "examples" / "data" / "mnist"
CHECKPOINT_MB = 100

# VmHWM (peak RSS) from /proc: unlike ru_maxrss it is not inherited from the parent process.
_CHILD = """
import sys, torch
from pacbound.io import load_model
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))
baseline = status("VmHWM:")
model = load_model(sys.argv[1], arch="mlp", arch_kwargs={kwargs}, device="cpu")
peak = status("VmHWM:")
print(baseline, peak, model.num_parameters)
"""


def time_mnist(repeats: int = 3) -> list[float]:
    from pacbound.io import load_dataset

    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        data = load_dataset(MNIST, split="train")
        seconds.append(time.perf_counter() - start)
        assert data.n == 60000
    return seconds


def checkpoint_peak_rss() -> dict[str, float]:
    import torch
    from safetensors.torch import save_file

    from pacbound.models import mlp

    # 784-W-W-10 with W chosen so that the float32 weights weigh about CHECKPOINT_MB.
    width = 4800
    kwargs = {"in_features": 784, "hidden": [width, width], "num_classes": 10}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.safetensors"
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in mlp(**kwargs).state_dict().items()}
        save_file({k: torch.randn(s) * 0.01 for k, s in shapes.items()}, str(path))
        size_mb = path.stat().st_size / 2**20
        code = _CHILD.replace("{kwargs}", repr(kwargs))
        out = subprocess.run(
            [sys.executable, "-c", code, str(path)],
            check=True,
            capture_output=True,
            text=True,
            cwd=REPO,
        ).stdout.split()
    baseline_kb, peak_kb, params = (int(v) for v in out)
    return {
        "checkpoint_mb": round(size_mb, 1),
        "parameters": params,
        "baseline_rss_mb": round(baseline_kb / 1024, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "peak_minus_baseline_mb": round((peak_kb - baseline_kb) / 1024, 1),
    }


def main() -> None:
    checkpoint = checkpoint_peak_rss()  # first, before this process grows
    seconds = time_mnist()
    report = {
        "mnist_train_gz_idx_seconds_best_of_3": round(min(seconds), 3),
        "mnist_train_gz_idx_seconds_all": [round(s, 3) for s in seconds],
        "target_seconds": 1.5,
        "checkpoint_100mb": checkpoint,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
