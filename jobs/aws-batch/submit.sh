#!/usr/bin/env bash
# Runs the pipeline on AWS Batch: registers jobs/aws-batch/job-definition.json, submits extract as an
# array job of N children (each reads AWS_BATCH_JOB_ARRAY_INDEX; PADIM_SHARDS gives the count), then
# fit, score and report as jobs that depend on it. The job file must be inside the image (or on a
# shared volume) at JOB, and its output an s3:// location.
# Usage: jobs/aws-batch/submit.sh QUEUE JOB [N]
set -euo pipefail
queue=${1:?usage: jobs/aws-batch/submit.sh QUEUE JOB [N]}
job=${2:?usage: jobs/aws-batch/submit.sh QUEUE JOB [N]}
shards=${3:-4}
here=$(dirname "$0")
aws batch register-job-definition --cli-input-json "file://$here/job-definition.json" >/dev/null
submit() { # NAME STAGE [DEPENDS-ON-ID] [ARRAY-SIZE]
    args=(--job-name "$1" --job-queue "$queue" --job-definition padim
          --parameters "stage=$2,job=$job"
          --container-overrides "environment=[{name=PADIM_SHARDS,value=$shards}]")
    [ -n "${3:-}" ] && args+=(--depends-on "jobId=$3")
    [ -n "${4:-}" ] && args+=(--array-properties "size=$4")
    aws batch submit-job "${args[@]}" --query jobId --output text
}
split=""
if grep -q '^\[split\]' "$job"; then split=$(submit padim-split split); fi
extract=$(submit padim-extract extract "$split" "$shards")
fit=$(submit padim-fit fit "$extract")
score=$(submit padim-score score "$fit")
submit padim-report report "$score"
