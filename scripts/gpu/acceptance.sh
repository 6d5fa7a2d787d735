#!/usr/bin/env bash
# GPU acceptance kit (docs/gpu.md): one command that settles what only a GPU can tell.
#   scripts/gpu/acceptance.sh --out DIR               on a GPU machine
#   scripts/gpu/acceptance.sh --cpu-check --out DIR   reduced form on CPU (what CI runs)
# Wheels the GPU machine lacks travel in .whl/ (`make gpu-wheels`); they are installed into a
# private folder first. The interpreter: $PYTHON when set, else the checkout's .venv/bin/python
# (what `make setup` builds), else python3. Without torch it stops at once, exit 2.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -x "$root/.venv/bin/python" ]]; then
    py="$root/.venv/bin/python"
else
    py="python3"
fi
if ! command -v "$py" >/dev/null 2>&1; then
    echo "error: no Python interpreter '$py' (set PYTHON to the one with torch installed)" >&2
    exit 2
fi
if compgen -G "$root/.whl/*.whl" >/dev/null; then
    site="${TMPDIR:-/tmp}/timelyfreeze-gpu-site"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "$root"/.whl/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if ! "$py" -c "import torch" >/dev/null 2>&1; then
    echo "error: $(command -v "$py") has no torch; run \`make setup\` (builds .venv) or set" \
        "PYTHON to an interpreter with torch installed" >&2
    exit 2
fi
exec "$py" "$root/scripts/gpu/acceptance.py" "$@"
