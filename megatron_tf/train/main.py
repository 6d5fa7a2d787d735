"""Worker entry of `timelyfreeze pretrain`: `python -m megatron_tf.train.main`, reading the job
file `$TIMELYFREEZE_JOB` names.

Tiny on purpose (torchtitan's train.py): read the job, build the trainer, train, close. `@record`
makes a crashing rank write torch elastic's error file, so torchrun reports which rank failed
and why instead of a bare exit code.
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.errors import record

from megatron_tf.process.worker_errors import report_user_errors
from megatron_tf.train.job import load_job
from megatron_tf.train.trainer import Trainer


@record
def main() -> int:
    # The job comes as every worker's does: the file $TIMELYFREEZE_JOB names (formats/job.py).
    # A TimelyFreezeError (plan for another layout, bad checkpoint) becomes one line and exit 2,
    # which `timelyfreeze pretrain` passes on as its own exit 2.
    with report_user_errors():
        trainer = Trainer(load_job())
        try:
            trainer.train()
        finally:
            trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
