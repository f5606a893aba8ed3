#!/usr/bin/env bash
# Install Hearth into ./.venv from the hash-pinned lock files (requirements/*.lock).
#   scripts/setup.sh         the service (runtime dependencies)
#   scripts/setup.sh --dev   plus the test tools, the llama.cpp engine (built from source:
#                            about 5 minutes on 2 cores, once), Slurm, munge and Chromium (Debian)
# Needs Python >= 3.11. Installs the Debian packages it needs when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[[ "${1:-}" == "--dev" ]] && dev=1
py="${PYTHON:-python3}"

"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "Hearth needs Python >= 3.11 (found $("$py" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
}

packages=()
"$py" -c 'import ensurepip, venv' 2>/dev/null || packages+=(python3-venv)
if ((dev)); then
  command -v cmake >/dev/null || packages+=(cmake)
  command -v g++ >/dev/null || packages+=(g++)
  command -v make >/dev/null || packages+=(make)
  # The tests start throwaway Slurm clusters (slurm-wlm, munge) and Redis servers, lint sbatch scripts,
  # and load the status page in headless Chromium.
  for pkg in slurm-wlm munge shellcheck redis-server chromium; do
    [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" == "install ok installed" ]] || packages+=("$pkg")
  done
fi
if ((${#packages[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "Please install these Debian packages first: ${packages[*]}" >&2
    exit 1
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}"
fi

[[ -x .venv/bin/python ]] || "$py" -m venv .venv
lock=requirements/runtime.lock
((dev)) && lock=requirements/dev.lock
# llama-cpp-python builds from source; a portable build runs on any x86-64 CPU.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes -r "$lock"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
echo "Hearth installed in .venv ($lock)."
