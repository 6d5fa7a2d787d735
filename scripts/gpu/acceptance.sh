#!/usr/bin/env bash
# GPU acceptance kit (docs/gpu.md): one command that settles what only a GPU can tell.
#   scripts/gpu/acceptance.sh --out DIR               on a GPU machine
#   scripts/gpu/acceptance.sh --cpu-check --out DIR   reduced form on CPU (what CI runs)
# Wheels the GPU machine lacks travel in .whl/ (`make gpu-wheels`); they are installed into a
# private folder first. PYTHON picks the interpreter (default: python3).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
py="${PYTHON:-python3}"
if compgen -G "$root/.whl/*.whl" >/dev/null; then
    site="${TMPDIR:-/tmp}/timelyfreeze-gpu-site"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "$root"/.whl/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$py" "$root/scripts/gpu/acceptance.py" "$@"
