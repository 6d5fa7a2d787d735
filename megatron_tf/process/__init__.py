"""The contract between the launcher and its worker processes, low enough for every worker.

`lifeline`: workers die with the process that started them. `worker_errors`: a worker's user
error reaches the CLI as one line and exit 2. Every worker entry (`train/main.py`,
`profile/worker.py`, the Megatron-LM entry in `launch/`) and the launcher use them; nothing here
imports torch or anything above `errors`.
"""
