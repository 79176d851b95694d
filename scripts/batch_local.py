#!/usr/bin/env python3
"""Runs jobs/aws-batch/submit.sh against a local stand-in for AWS Batch, for the tests.

`batch_local.py aws ARGS...` is what submit.sh finds as `aws` (a shim on PATH): it takes the two calls
the script makes, `aws batch register-job-definition --cli-input-json file://F` and
`aws batch submit-job ...` (the AWS CLI's shorthand syntax for --parameters, --container-overrides,
--depends-on, --array-properties), turns each into the request the AWS CLI would send, validates it
against botocore's Batch service model (RegisterJobDefinition, SubmitJob), records it under
$BATCH_LOCAL_STATE and prints the new job's id.

`batch_local.py run PADIM` then does what Batch would: it runs the recorded jobs in an order that puts
every job after the ones it depends on (an unknown dependency is an error), each array child with
AWS_BATCH_JOB_ARRAY_INDEX, the environment of the job definition with the submission's overrides
on top, and the definition's command with its Ref:: parameters filled in (the submission's over the
definition's defaults), after the image's entry point, `padim`: PADIM. Any failing child stops the run (exit 1).
"""
import json
import os
import pathlib
import re
import subprocess
import sys

from botocore.session import get_session
from botocore.validate import ParamValidator

state = pathlib.Path(os.environ["BATCH_LOCAL_STATE"])
model = get_session().get_service_model("batch")


def validate(operation, params):
    report = ParamValidator().validate(params, model.operation_model(operation).input_shape)
    if report.has_errors():
        sys.exit(f"aws batch {operation}: {report.generate_report()}")


def shorthand_map(text):
    """`k=v,k=v` (no nesting: what submit.sh uses)."""
    return dict(item.split("=", 1) for item in text.split(","))


def aws(args):
    if args[:2] == ["batch", "register-job-definition"]:
        source = args[args.index("--cli-input-json") + 1]
        definition = json.loads(pathlib.Path(source.removeprefix("file://")).read_text())
        validate("RegisterJobDefinition", definition)
        (state / "definition.json").write_text(json.dumps(definition))
        print(json.dumps({"jobDefinitionName": definition["jobDefinitionName"], "revision": 1}))
        return
    if args[:2] != ["batch", "submit-job"]:
        sys.exit(f"batch_local: unsupported aws call {args}")
    request, rest = {}, args[2:]
    while rest:
        flag, value, rest = rest[0], rest[1], rest[2:]
        if flag == "--job-name":
            request["jobName"] = value
        elif flag == "--job-queue":
            request["jobQueue"] = value
        elif flag == "--job-definition":
            request["jobDefinition"] = value
        elif flag == "--parameters":
            request["parameters"] = shorthand_map(value)
        elif flag == "--container-overrides":
            match = re.fullmatch(r"environment=\[(.*)\]", value)
            if not match:
                sys.exit(f"batch_local: unsupported --container-overrides {value!r}")
            pairs = re.findall(r"\{name=([^,}]*),value=([^}]*)\}", match.group(1))
            request["containerOverrides"] = {"environment": [{"name": n, "value": v} for n, v in pairs]}
        elif flag == "--depends-on":
            request.setdefault("dependsOn", []).append(shorthand_map(value))
        elif flag == "--array-properties":
            request["arrayProperties"] = {"size": int(shorthand_map(value)["size"])}
        elif flag in ("--query", "--output"):
            pass
        else:
            sys.exit(f"batch_local: unsupported submit-job option {flag}")
    validate("SubmitJob", request)
    jobs = state / "jobs.jsonl"
    number = len(jobs.read_text().splitlines()) if jobs.exists() else 0
    request["jobId"] = f"job-{number:03}"
    with jobs.open("a") as f:
        f.write(json.dumps(request) + "\n")
    print(request["jobId"])


def run(padim):
    definition = json.loads((state / "definition.json").read_text())
    container = definition["containerProperties"]
    jobs = [json.loads(line) for line in (state / "jobs.jsonl").read_text().splitlines()]
    done, pending = set(), list(jobs)
    while pending:
        ready = [j for j in pending if all(d["jobId"] in done for d in j.get("dependsOn", []))]
        if not ready:
            known = {j["jobId"] for j in jobs}
            sys.exit(f"batch_local: jobs wait forever on {[(j['jobName'], j.get('dependsOn')) for j in pending]}"
                     f" (known ids {sorted(known)})")
        job = ready[0]
        pending.remove(job)
        parameters = {**definition.get("parameters", {}), **job.get("parameters", {})}
        command = [parameters[word[5:]] if word.startswith("Ref::") else word for word in container["command"]]
        command = [padim, *command]  # the image's entry point
        environment = {e["name"]: e["value"] for e in container.get("environment", [])}
        environment.update({e["name"]: e["value"] for e in job.get("containerOverrides", {}).get("environment", [])})
        size = job.get("arrayProperties", {}).get("size")
        for index in range(size) if size else [None]:
            env = {**os.environ, **environment}
            if index is not None:
                env["AWS_BATCH_JOB_ARRAY_INDEX"] = str(index)
            result = subprocess.run(command, env=env, capture_output=True, text=True)
            label = f"{job['jobName']}" + (f"[{index}]" if index is not None else "")
            print(f"{label}: {' '.join(command)} {json.dumps(environment)} -> {result.returncode}")
            if result.returncode != 0:
                sys.exit(f"{label} failed:\n{result.stderr}")
        done.add(job["jobId"])


if __name__ == "__main__":
    if sys.argv[1] == "aws":
        aws(sys.argv[2:])
    elif sys.argv[1] == "run":
        run(sys.argv[2])
    else:
        sys.exit("usage: batch_local.py aws ARGS... | batch_local.py run PADIM")
