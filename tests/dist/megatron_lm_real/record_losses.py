"""Run the checkout's real `pretrain_gpt.py`, recording every training step's exact losses.

Copied into a copy of a Megatron-LM snapshot by tests/dist/test_megatron_lm_real.py and started
with `--script record_losses.py`. Megatron-LM prints losses rounded to 6 digits; this wraps
`megatron.training.training.train_step` (which `train()` calls by name) and, at exit, each rank
writes $REAL_RESULTS/rank<R>.json: [[iteration, {loss name: float}], ...] for the steps whose
loss it saw (the last pipeline stage), and the megatron/core it imported. Nothing else changes:
`pretrain_gpt.py` then runs as `__main__` with its own path as argv[0].

Started by torchrun directly with REAL_STOCK=1 (not through `timelyfreeze`), it is the stock
run without TimelyFreeze: only the CPU stand-in for torch.cuda is switched on.
"""

import atexit
import json
import os
import runpy
import sys
from pathlib import Path

if os.environ.get("REAL_STOCK") == "1":
    from megatron_tf.megatron.cpu_trial import enable_cpu_trial

    assert enable_cpu_trial(), "the stock run needs the CPU stand-in (a machine without CUDA)"

import megatron.core  # noqa: E402 (after the stand-in, as the timelyfreeze entry does it)
import megatron.training.training as training  # noqa: E402

SCRIPT = Path(__file__).resolve().parent / "pretrain_gpt.py"
RESULTS = Path(os.environ["REAL_RESULTS"])
RANK = int(os.environ["RANK"])
steps: list[list] = []
original = training.train_step


def train_step(*args, **kwargs):
    result = original(*args, **kwargs)
    iteration = kwargs.get("iteration")
    steps.append([iteration, {k: float(v) for k, v in result[0].items()}])
    return result


def write() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"steps": steps, "megatron_core": megatron.core.__file__}
    (RESULTS / f"rank{RANK}.json").write_text(json.dumps(out))


training.train_step = train_step
atexit.register(write)
sys.argv[0] = str(SCRIPT)
runpy.run_path(str(SCRIPT), run_name="__main__")
