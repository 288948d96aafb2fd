#!/usr/bin/env bash
# Set up .venv and run the linter and the test suite. Real-data tests read $STBP_DATA
# (a folder holding mnist/); they are skipped, with the reason shown, when it is not set.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STBP_EXTRAS=test bash "$root/scripts/setup.sh"
cd "$root"
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest "$@"
