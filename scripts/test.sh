#!/usr/bin/env bash
# Set up, start the PostgreSQL server the study tests use, lint, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}

bash scripts/setup.sh
if [ -z "${FUSEDBN_TEST_POSTGRES_URL:-}" ]; then
    eval "$(bash scripts/start-postgres.sh)"
fi
"$python" -m ruff check .
"$python" -m pytest tests -n 2 -q "$@"
