"""Planning: the freeze-ratio LP and its solvers (no torch, no megatron import).

The two constants below are here, not in lp.py, so the CLI can show them as defaults
without importing numpy at start-up.
"""

AUTO_GLOP_MAX_VARIABLES = 60_000
"""`--solver auto` uses GLOP up to this many LP variables (after the series reduction), PDLP
above. GLOP solved interleaved pp=16 vpp=4 M=128 (16k variables) in about 4 s of CPU and did
not finish pp=32 vpp=4 M=512 (131k) in 17 minutes of CPU (docs/lp.md, section 3)."""
DEFAULT_PDLP_EPS = 1e-4
"""PDLP's relative accuracy (both passes) when `auto` or `--solver pdlp` picks it."""
