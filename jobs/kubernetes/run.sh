#!/usr/bin/env bash
# Runs the pipeline on Kubernetes: the job file as a ConfigMap, the split (when the job has one) here,
# extract as an Indexed Job, then the merge job once every index has completed.
# Usage: jobs/kubernetes/run.sh JOB   (the job's output must be a location every pod reaches, e.g. s3://)
set -euo pipefail
job=${1:?usage: jobs/kubernetes/run.sh JOB}
here=$(dirname "$0")
padim=${PADIM:-target/release/padim}
if grep -q '^\[split\]' "$job"; then "$padim" split "$job" --quiet; fi
kubectl create configmap padim-job --from-file=job.toml="$job" --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -f "$here/extract.yaml"
kubectl wait --for=condition=complete --timeout=24h job/padim-extract
kubectl apply -f "$here/merge.yaml"
kubectl wait --for=condition=complete --timeout=24h job/padim-merge
