#!/usr/bin/env bash
# Install, then run the whole test suite, the slow end-to-end tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
PAPERTUNE_SETUP_TESTS=1 bash scripts/setup.sh
.venv/bin/python -m pytest -m "slow or not slow" "$@"
