"""`python -m megatron_tf` is the `timelyfreeze` CLI."""

from megatron_tf.cli import main

main()
