#!/usr/bin/env bash
# Print the path of a working Python >= 3.12 interpreter (megatron-core 0.19 needs it).
# A pyenv shim named python3.12 can exist yet fail, so each candidate is actually run.
set -u
for cand in "${PYTHON:-}" python3.12 python3.13 python3 \
            "$HOME"/.pyenv/versions/3.12*/bin/python3.12 \
            "$HOME"/.pyenv/versions/3.13*/bin/python3.13 \
            /usr/bin/python3.12 /usr/local/bin/python3.12; do
  [ -n "$cand" ] || continue
  if "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
    command -v "$cand" 2>/dev/null || echo "$cand"
    exit 0
  fi
done
echo "find_python.sh: no Python >= 3.12 found; set PYTHON=/path/to/python3.12" >&2
exit 1
