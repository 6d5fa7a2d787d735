"""The GPT that trains and is profiled: the builder, the forward step, the loss.

One module each, shared by the trainer and the profiler, so that a profile times exactly the
model and the step that training runs (`gpt.build_training_model`, `step.run_schedule`).
Besides `megatron/`, this is the only package that imports `megatron.core`, and only its public
model API (GPTModel and its layer specs, TransformerConfig, DistributedDataParallel, Float16Module,
parallel_state's stage queries, the pipeline schedule's entry point); see docs/architecture.md.
"""
