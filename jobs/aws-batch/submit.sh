#!/usr/bin/env bash
# Runs the pipeline on AWS Batch: registers jobs/aws-batch/job-definition.json, submits extract as an
# array job of N children (each reads AWS_BATCH_JOB_ARRAY_INDEX; PADIM_SHARDS gives the count), then
# fit, score (an array job of N, or M of them when the fit's models are split into M parts: part j's
# children get PADIM_MODELS=j/M) and report as jobs that depend on it. The job file must be inside the
# image (or on a shared volume) at JOB, and its output an s3:// location. The image is `make image`'s,
# pushed where Batch pulls from: PADIM_IMAGE (default padim:latest) replaces the definition's.
# Usage: [PADIM_IMAGE=REGISTRY/padim:TAG] jobs/aws-batch/submit.sh QUEUE JOB [N [M]]
set -euo pipefail
usage="usage: jobs/aws-batch/submit.sh QUEUE JOB [N [M]]"
queue=${1:?$usage}
job=${2:?$usage}
shards=${3:-4}
parts=${4:-1}
for n in "$shards" "$parts"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "N and M must be positive integers, not '$n'; $usage" >&2; exit 2; }
done
here=$(dirname "$0")
definition=$(mktemp)
trap 'rm -f "$definition"' EXIT
sed "s|\"image\": \"[^\"]*\"|\"image\": \"${PADIM_IMAGE:-padim:latest}\"|" "$here/job-definition.json" >"$definition"
aws batch register-job-definition --cli-input-json "file://$definition" >/dev/null
submit() { # NAME STAGE DEPENDS-ON-IDS ARRAY-SIZE [EXTRA-ENVIRONMENT]
    args=(--job-name "$1" --job-queue "$queue" --job-definition padim
          --parameters "stage=$2,job=$job"
          --container-overrides "environment=[{name=PADIM_SHARDS,value=$shards}${5:+,$5}]")
    for id in $3; do args+=(--depends-on "jobId=$id"); done
    [ -n "$4" ] && args+=(--array-properties "size=$4")
    aws batch submit-job "${args[@]}" --query jobId --output text
}
split=$(submit padim-split split "" "")
extract=$(submit padim-extract extract "$split" "$shards")
fit=$(submit padim-fit fit "$extract" "")
scores=""
if [ "$parts" = 1 ]; then
    scores=$(submit padim-score score "$fit" "$shards")
else
    for ((j = 0; j < parts; j++)); do
        scores+=" $(submit "padim-score-$j" score "$fit" "$shards" "{name=PADIM_MODELS,value=$j/$parts}")"
    done
fi
submit padim-report report "$scores" ""
