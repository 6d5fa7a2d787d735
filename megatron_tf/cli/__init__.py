"""The `timelyfreeze` command line: one module per command, all registered on one typer app.

Command modules import heavy dependencies (torch, megatron-core, OR-Tools) inside the
command function, so `timelyfreeze --help` and the torch-free commands start fast.
"""

from megatron_tf.cli._app import app, main, reflow_help

# Each import registers its command(s) on `app`.
from megatron_tf.cli import simulate  # noqa: E402,F401  isort: skip
from megatron_tf.cli import solve  # noqa: E402,F401  isort: skip
from megatron_tf.cli import profile  # noqa: E402,F401  isort: skip
from megatron_tf.cli import pretrain  # noqa: E402,F401  isort: skip
from megatron_tf.cli import demo  # noqa: E402,F401  isort: skip
from megatron_tf.cli import patch  # noqa: E402,F401  isort: skip
from megatron_tf.cli import compare  # noqa: E402,F401  isort: skip

reflow_help(app)

__all__ = ["app", "main"]
