#!/usr/bin/env python3
"""Runs the Kubernetes templates' pipeline locally, as jobs/kubernetes/run.sh would on a cluster, for
the tests.

Usage: k8s_local.py TEMPLATES JOBS_DIR PADIM

TEMPLATES is a copy of jobs/kubernetes; JOBS_DIR holds job.toml and stands for the ConfigMap mounted
at each container's `/jobs` (so that paths in the job resolve as they would in the pod); PADIM is the
binary that `padim` in a container command means. Like run.sh: the split here first (when the job
has one), then extract.yaml, fit.yaml, score.yaml and report.yaml in turn, each to completion. Each
Job runs its pods one after another: an Indexed Job `completions` pods with JOB_COMPLETION_INDEX, any
other Job one pod; a pod gets its container's `env`, its command (the image's entry point, `padim`,
unless `command` replaces it, then `args`) with the `/jobs` mount path mapped to JOBS_DIR and `padim`
found on PATH. Any failing pod stops the run (exit 1). Prints a line per pod.
"""
import os
import pathlib
import subprocess
import sys
import tempfile

import yaml

templates, jobs_dir, padim = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]).resolve(), sys.argv[3]
bin_dir = tempfile.mkdtemp()
os.symlink(padim, os.path.join(bin_dir, "padim"))
path = f"{bin_dir}:{os.environ['PATH']}"

job = jobs_dir / "job.toml"
if any(line.startswith("[split]") for line in job.read_text().splitlines()):
    result = subprocess.run([padim, "split", str(job), "--quiet"], capture_output=True, text=True)
    print(f"split -> {result.returncode}")
    if result.returncode != 0:
        sys.exit(f"split failed:\n{result.stderr}")

for stage in ["extract", "fit", "score", "report"]:
    (doc,) = list(yaml.safe_load_all((templates / f"{stage}.yaml").read_text()))
    spec = doc["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    if mounts != {"/jobs": "job"}:
        sys.exit(f"{stage}.yaml: expected the job ConfigMap mounted at /jobs, found {mounts}")
    # As in a pod: `command` replaces the image's entry point (padim), `args` follow it.
    words = container.get("command", ["padim"]) + container.get("args", [])
    command = [word.replace("/jobs/", f"{jobs_dir}/") for word in words]
    environment = {e["name"]: e["value"] for e in container.get("env", [])}
    indexed = spec.get("completionMode") == "Indexed"
    for index in range(spec["completions"]) if indexed else [None]:
        env = {**os.environ, **environment, "PATH": path}
        if index is not None:
            env["JOB_COMPLETION_INDEX"] = str(index)
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        label = doc["metadata"]["name"] + (f"-{index}" if index is not None else "")
        print(f"{label}: {environment} -> {result.returncode}")
        if result.returncode != 0:
            sys.exit(f"{label} failed: {command}\n{result.stderr}")
