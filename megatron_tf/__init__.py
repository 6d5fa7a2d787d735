"""TimelyFreeze for Megatron-Core.

Critical-path weight-gradient freezing for pipeline-parallel training: model the schedule as a
DAG, measure stage costs, solve an LP for per-(rank, chunk, microbatch) freeze ratios, and
skip exactly that weight-gradient work at run time.
"""

__version__ = "0.1.0"
