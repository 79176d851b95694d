#!/usr/bin/env bash
# Runs the pipeline on Kubernetes: the job file as a ConfigMap, the split (the dataset's manifest) here,
# then extract (an Indexed Job), fit, score (an Indexed Job) and report, each applied once the one
# before has completed; a failed stage stops the script (reapplying reruns only unfinished shards).
# The pods run `make image`'s image, pushed where the cluster pulls from: PADIM_IMAGE (default
# padim:latest) replaces the manifests' `image:`.
# Usage: [PADIM_IMAGE=REGISTRY/padim:TAG] jobs/kubernetes/run.sh JOB
#        (the job's output must be a location every pod reaches, e.g. s3://)
set -euo pipefail
job=${1:?usage: jobs/kubernetes/run.sh JOB}
here=$(dirname "$0")
padim=${PADIM:-target/release/padim}
"$padim" split "$job" --quiet
kubectl create configmap padim-job --from-file=job.toml="$job" --dry-run=client -o yaml | kubectl apply -f -
for stage in extract fit score report; do
    kubectl delete job "padim-$stage" --ignore-not-found
    sed "s|image: padim:latest|image: ${PADIM_IMAGE:-padim:latest}|" "$here/$stage.yaml" | kubectl apply -f -
    kubectl wait --for=condition=complete --timeout=24h "job/padim-$stage"
done
