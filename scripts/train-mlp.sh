#!/usr/bin/env bash
# Set up .venv and train the paper's MNIST MLP (preset mnist-mlp). Extra arguments go to
# `stbp train`, e.g. --data-dir DIR, --epochs N, --seed S, --out RUN_DIR.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
exec "$root/.venv/bin/stbp" train --preset mnist-mlp "$@"
