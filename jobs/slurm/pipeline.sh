#!/usr/bin/env bash
# Submits the pipeline to Slurm: extract as an array job of N shards, then fit and score once every
# shard has succeeded. Usage: jobs/slurm/pipeline.sh JOB [N]   (run from the project root, on a
# login node whose file system the compute nodes share; the job's output location must be shared too).
set -euo pipefail
job=${1:?usage: jobs/slurm/pipeline.sh JOB [SHARDS]}
shards=${2:-4}
padim=${PADIM:-target/release/padim}
extract=$(sbatch --parsable --array=0-$((shards - 1)) --job-name=padim-extract \
    --wrap "$padim extract $job --shard \${SLURM_ARRAY_TASK_ID}/$shards --quiet")
sbatch --parsable --dependency=afterok:$extract --job-name=padim-fit-score \
    --wrap "$padim fit $job --quiet && $padim score $job --quiet"
