#!/usr/bin/env bash
# Submits a job's pipeline to Slurm as array jobs chained with --dependency=afterok:
#   split (when the job has one) -> extract[N] -> fit[N] (partial statistics) -> fit (merge)
#   -> score[N] -> report
# Each array task takes its shard from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT; a failed task
# stops the chain, and resubmitting the same job reruns only the shards without a done marker.
# Usage, from the project root on a node whose file system the compute nodes share (or with the
# job's output and inputs in an object store):
#   jobs/slurm/pipeline.sh JOB [SHARDS]        (or: make submit-slurm JOB=... SHARDS=...)
# Extra sbatch options (partition, account, time, memory) go in SBATCH_OPTIONS. Prints the job ids,
# the report's last.
set -euo pipefail
job=${1:?usage: jobs/slurm/pipeline.sh JOB [SHARDS]}
shards=${2:-4}
padim=$(realpath "${PADIM:-target/release/padim}")
job=$(realpath "$job")
read -r -a options <<<"${SBATCH_OPTIONS:-}"
submit() { sbatch --parsable --chdir="$PWD" "${options[@]}" "$@"; }
array="--array=0-$((shards - 1))"

after=()
if grep -q '^\[split\]' "$job"; then
    split=$(submit --job-name=padim-split --wrap "$padim split $job --quiet")
    after=(--dependency="afterok:$split")
    echo "$split"
fi
extract=$(submit "${after[@]}" "$array" --job-name=padim-extract --wrap "$padim extract $job --quiet")
echo "$extract"
fit_shards=$(submit --dependency="afterok:$extract" "$array" --job-name=padim-fit-shard --wrap "$padim fit $job --quiet")
echo "$fit_shards"
fit=$(submit --dependency="afterok:$fit_shards" --job-name=padim-fit --wrap "$padim fit $job --quiet")
echo "$fit"
score=$(submit --dependency="afterok:$fit" "$array" --job-name=padim-score --wrap "$padim score $job --quiet")
echo "$score"
report=$(submit --dependency="afterok:$score" --job-name=padim-report --wrap "$padim report $job --quiet")
echo "$report"
