#!/usr/bin/env bash
# Submits the pipeline to Slurm: the split (when the job has one), extract as an array job of N
# shards, then fit, score and report once every shard has succeeded. Usage:
#   jobs/slurm/pipeline.sh JOB [N]
# from the project root, on a login node whose file system the compute nodes share (the job's output
# location must be shared too).
set -euo pipefail
job=${1:?usage: jobs/slurm/pipeline.sh JOB [SHARDS]}
shards=${2:-4}
padim=${PADIM:-target/release/padim}
# The split is quick (it hashes the files); it runs here so the array sees its manifest.
if grep -q '^\[split\]' "$job"; then
    "$padim" split "$job" --quiet
fi
extract=$(sbatch --parsable --array=0-$((shards - 1)) --job-name=padim-extract \
    --wrap "$padim extract $job --shard \${SLURM_ARRAY_TASK_ID}/$shards --quiet")
sbatch --parsable --dependency=afterok:$extract --job-name=padim-fit-score-report \
    --wrap "$padim fit $job --quiet && $padim score $job --quiet && $padim report $job --quiet"
