#!/usr/bin/env bash
# Set up Hearth and run the demo: a gateway plus a local simulated engine on embedded
# defaults (SQLite, no Redis, no Slurm). Arguments go to `hearth demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/hearth demo "$@"
