"""What a test worker calls to hand its result back to `tests/dist/harness.run_torchrun`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


def save_result(obj: Any) -> None:
    """Save this rank's result as `rank{R}.pt` in the folder the harness named."""
    out = Path(os.environ["TF_TEST_RESULTS"])
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
    tmp = out / f".rank{rank}.pt.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, out / f"rank{rank}.pt")
    core = sys.modules.get("megatron.core")
    if core is not None:  # which megatron-core ran: the harness checks it was the one asked for
        (out / f"rank{rank}.megatron").write_text(str(core.__file__))
