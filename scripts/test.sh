#!/usr/bin/env bash
# Set up Hearth with its test tools and run every check: ruff, mypy (strict on gateway/ and
# endpoints/) and the whole pytest suite (real servers on loopback; PostgreSQL at
# 127.0.0.1:5432 and Redis at 127.0.0.1:6379 must be running). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/pytest "$@"
