#!/usr/bin/env bash
# The README's main job. For now: a worked `pacbound bound` example.
set -euo pipefail
cd "$(dirname "$0")/.."
PB=".venv/bin/pacbound"
echo "# PAC-Bayes-kl certificate: empirical risk 0.02, KL 5000 nats, n = 60000, delta = 0.025"
$PB bound --risk 0.02 --kl 5000 --n 60000 --delta 0.025
