#!/usr/bin/env bash
# Submits a job's pipeline to Slurm as array jobs chained with --dependency=afterok:
#   split (when the job has one) -> extract[N] -> fit[N] (partial statistics) -> fit (merge)
#   -> score[N x M] -> report
# Each extract and fit task takes its shard from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT. Score
# is one array of N x M tasks when the fit's models are split into M parts (a sweep's experiments:
# task t scores image shard t mod N with model part t div N, `--shard i/N --models j/M`), else N. A
# failed task stops the chain, and resubmitting the same job reruns only what has no done marker.
# Usage, from the project root on a node whose file system the compute nodes share (or with the
# job's output and inputs in an object store):
#   jobs/slurm/pipeline.sh JOB [SHARDS [MODEL_PARTS]]   (or: make submit-slurm JOB=... SHARDS=... MODEL_PARTS=...)
# Extra sbatch options (partition, account, time, memory) go in SBATCH_OPTIONS. Prints the job ids,
# the report's last.
set -euo pipefail
usage="usage: jobs/slurm/pipeline.sh JOB [SHARDS [MODEL_PARTS]]"
job=${1:?$usage}
shards=${2:-4}
parts=${3:-1}
for n in "$shards" "$parts"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "SHARDS and MODEL_PARTS must be positive integers, not '$n'; $usage" >&2; exit 2; }
done
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
if [ "$parts" = 1 ]; then
    score=$(submit --dependency="afterok:$fit" "$array" --job-name=padim-score --wrap "$padim score $job --quiet")
else
    # \$ : evaluated by the task's shell, where SLURM_ARRAY_TASK_ID is set.
    t='$SLURM_ARRAY_TASK_ID'
    score=$(submit --dependency="afterok:$fit" --array=0-$((shards * parts - 1)) --job-name=padim-score \
        --wrap "$padim score $job --quiet --shard \$(($t % $shards))/$shards --models \$(($t / $shards))/$parts")
fi
echo "$score"
report=$(submit --dependency="afterok:$score" --job-name=padim-report --wrap "$padim report $job --quiet")
echo "$report"
