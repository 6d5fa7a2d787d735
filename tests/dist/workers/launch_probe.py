"""Torchrun probe for tests/dist/test_launch_torchrun.py: what a rank sees, or a dying rank.

Writes $PROBE_DIR/rank<R>.json with its rank, world size, node-local rank, group rank and the
TIMELYFREEZE_* variables; with PROBE_FAIL_RANK=<R>, that rank exits 3 after a barrier-free
start, which must fail the whole job.
"""

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    if os.environ.get("PROBE_FAIL_RANK") == str(rank):
        sys.exit(3)
    seen = {
        "rank": rank,
        "world_size": dist.get_world_size(),
        "local_rank": int(os.environ["LOCAL_RANK"]),
        "group_rank": int(os.environ["GROUP_RANK"]),
        "argv": sys.argv[1:],
        "env": {k: v for k, v in os.environ.items() if k.startswith("TIMELYFREEZE_")},
    }
    dist.barrier()
    Path(os.environ["PROBE_DIR"], f"rank{rank}.json").write_text(json.dumps(seen))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
