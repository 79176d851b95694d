#!/usr/bin/env bash
# Submits a job's pipeline to Slurm as array jobs chained with --dependency=afterok:
#   split -> extract[N] -> fit[N] (partial statistics) -> fit (merge)
#   -> score[N x M] -> report
# Each extract and fit task takes its shard from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT. Score
# is one array of N x M tasks when the fit's models are split into M parts (a sweep's experiments:
# task t scores image shard t mod N with model part t div N, `--shard i/N --models j/M`), else N. A
# failed task stops the chain, and resubmitting the same job reruns only what has no done marker.
# Usage, from the project root on a node whose file system the compute nodes share (or with the
# job's output and inputs in an object store):
#   jobs/slurm/pipeline.sh JOB [SHARDS [MODEL_PARTS]]   (or: make submit-slurm JOB=... SHARDS=... MODEL_PARTS=...)
# Extra sbatch options (partition, account, time, memory) go in SBATCH_OPTIONS. Prints the job ids,
# the report's last. A task whose storage failed after padim's own retries (exit 75) is tried again
# in place up to PADIM_ATTEMPTS times (default 3), 30 s apart; a bad job or bad input (exit 2) fails
# at once (docs/operations.md "Exit codes").
set -euo pipefail
usage="usage: jobs/slurm/pipeline.sh JOB [SHARDS [MODEL_PARTS]]"
job=${1:?$usage}
shards=${2:-4}
parts=${3:-1}
for n in "$shards" "$parts"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "SHARDS and MODEL_PARTS must be positive integers, not '$n'; $usage" >&2; exit 2; }
done
binary=$(realpath "${PADIM:-target/release/padim}")
attempts=${PADIM_ATTEMPTS:-3}
[[ $attempts =~ ^[1-9][0-9]*$ ]] || { echo "PADIM_ATTEMPTS must be a positive integer, not '$attempts'" >&2; exit 2; }
# Every task runs padim through this loop: exit 75 (transient storage failure) is retried.
padim="for a in \$(seq $attempts); do $binary \"\$@\"; rc=\$?; [ \$rc -ne 75 ] && exit \$rc; sleep 30; done; exit 75; :"
padim="bash -c '$padim' padim"
job=$(realpath "$job")
read -r -a options <<<"${SBATCH_OPTIONS:-}"
submit() { sbatch --parsable --chdir="$PWD" "${options[@]}" "$@"; }
array="--array=0-$((shards - 1))"

# The split stage hashes the dataset into the manifest every later stage works on (and splits it when
# the job has a [split]): once, before the extract array.
split=$(submit --job-name=padim-split --wrap "$padim split $job --quiet")
echo "$split"
extract=$(submit --dependency="afterok:$split" "$array" --job-name=padim-extract --wrap "$padim extract $job --quiet")
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
