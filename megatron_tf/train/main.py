"""Worker entry of `timelyfreeze pretrain`: `python -m megatron_tf.train.main --job job.json`.

Tiny on purpose (torchtitan's train.py): read the job, build the trainer, train, close. `@record`
makes a crashing rank write torch elastic's error file, so torchrun reports which rank failed
and why instead of a bare exit code.
"""

from __future__ import annotations

import argparse
import sys

from torch.distributed.elastic.multiprocessing.errors import record

from megatron_tf.process.worker_errors import report_user_errors
from megatron_tf.train.job import load_job
from megatron_tf.train.trainer import Trainer


@record
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="megatron_tf.train.main")
    parser.add_argument("--job", required=True, help="job.json written by `timelyfreeze pretrain`")
    args = parser.parse_args(argv)
    # A TimelyFreezeError (plan for another layout, bad checkpoint) becomes one line and exit 2,
    # which `timelyfreeze pretrain` passes on as its own exit 2.
    with report_user_errors():
        trainer = Trainer(load_job(args.job))
        try:
            trainer.train()
        finally:
            trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
