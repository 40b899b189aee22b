#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install hfasr into it.
# Usage: tools/setup-env.sh            (idempotent; prints the venv path)
# Env:   HFASR_VENV=/path/to/venv      use another location
#        PYTHON=python3.11             interpreter used to create the venv
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${HFASR_VENV:-$root/.venv}
py=${PYTHON:-python3}
stamp=$venv/.hfasr-installed
if [ ! -x "$venv/bin/python" ]; then
  echo "setup-env: creating $venv" >&2
  "$py" -m venv "$venv"
fi
# Reinstall when pyproject.toml changed since the last install.
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  echo "setup-env: installing hfasr and its dependencies (first time: several minutes)" >&2
  "$venv/bin/python" -m pip install -q --upgrade pip >&2 || true
  # the tensorboard extra (hfasr train --tensorboard; tests/test_tensorboard.py): wheels only, seconds
  "$venv/bin/python" -m pip install -q -e "$root[dev,tensorboard]" >&2
  "$venv/bin/python" -c "import hfasr._kaldi, torchaudio, lhotse" >&2
  touch "$stamp"
fi
echo "$venv"
