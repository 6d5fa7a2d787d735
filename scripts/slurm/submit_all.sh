#!/bin/bash
# TimelyFreeze on Slurm: profile -> solve -> pretrain as three dependent jobs.
#
#   MEGATRON_LM=/path/to/Megatron-LM WORKDIR=/shared/tf-run \
#       scripts/slurm/submit_all.sh <Megatron-LM arguments>
#
# Each job starts only if the previous one succeeded (sbatch --dependency=afterok); a failed
# profile or an infeasible plan stops the chain. Files go to WORKDIR, which every node must see.
# MAX_FREEZE_RATIO is the accuracy budget handed to `timelyfreeze solve` (mean freeze ratio cap
# per stage); pick it from `timelyfreeze solve --sweep` if unsure.
# SBATCH overrides extra sbatch flags for the two GPU jobs (e.g. "--nodes 4 --account abc").
set -euo pipefail

: "${MEGATRON_LM:?set MEGATRON_LM to your Megatron-LM checkout}"
: "${WORKDIR:=$PWD}"
: "${MAX_FREEZE_RATIO:=0.5}"
: "${TIMELYFREEZE:=timelyfreeze}"
: "${SBATCH:=}"
HERE="$(cd "$(dirname "$0")" && pwd)"
PROFILE="$WORKDIR/profile.json"
PLAN="$WORKDIR/plan.json"
export MEGATRON_LM TIMELYFREEZE PROFILE PLAN

# --parsable prints just the job id.
# shellcheck disable=SC2086  # SBATCH holds several flags on purpose
profile_job=$(sbatch --parsable $SBATCH --export=ALL "$HERE/profile.sbatch" "$@")
solve_job=$(sbatch --parsable --dependency="afterok:$profile_job" --job-name=tf-solve \
    --nodes=1 --ntasks=1 --time=00:10:00 --output="%x-%j.out" --export=ALL \
    --wrap="\"$TIMELYFREEZE\" solve \"$PROFILE\" --max-freeze-ratio $MAX_FREEZE_RATIO -o \"$PLAN\"")
# shellcheck disable=SC2086
train_job=$(sbatch --parsable $SBATCH --dependency="afterok:$solve_job" --export=ALL \
    "$HERE/pretrain.sbatch" "$@")
echo "profile: $profile_job  solve: $solve_job  pretrain: $train_job"
