#!/usr/bin/env python3
"""Validates the scheduler templates of jobs/ against their engines' own schemas, offline.

Kubernetes: every document of jobs/kubernetes/*.yaml against the OpenAPI-derived JSON schemas of the
latest Kubernetes release kubernetes-validate ships (strict: unknown fields are errors), plus the
Indexed Jobs' contract with padim (PADIM_SHARDS, times PADIM_MODEL_PARTS where set, equals `completions`). AWS Batch: the job definition
against botocore's service model of RegisterJobDefinition, and the requests submit.sh makes (an array
job with a dependency) against SubmitJob. Prints one line per checked template; exits 1 on any error. Argument: the project root (default this
one), so that tests can check altered copies.
"""
import json
import pathlib
import sys

import yaml
import kubernetes_validate
from botocore.session import get_session
from botocore.validate import ParamValidator

root = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent
errors = []

version = kubernetes_validate.latest_version()
for path in sorted((root / "jobs/kubernetes").glob("*.yaml")):
    for doc in yaml.safe_load_all(path.read_text()):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{path.name}: {e.message} at {list(e.path)}")
            continue
        spec = doc["spec"]
        if spec.get("completionMode") == "Indexed":
            env = {e["name"]: e.get("value") for c in spec["template"]["spec"]["containers"] for e in c.get("env", [])}
            tasks = int(env.get("PADIM_SHARDS") or 0) * int(env.get("PADIM_MODEL_PARTS") or 1)
            if tasks != spec["completions"]:
                errors.append(f"{path.name}: PADIM_SHARDS x PADIM_MODEL_PARTS = {tasks} != completions {spec['completions']}")
        print(f"ok kubernetes {version} {path.name} {doc['kind']}/{doc['metadata']['name']}")

model = get_session().get_service_model("batch")
validator = ParamValidator()


def check(operation, params, name):
    report = validator.validate(params, model.operation_model(operation).input_shape)
    if report.has_errors():
        errors.append(f"{name}: {report.generate_report()}")
    else:
        print(f"ok aws-batch {operation} {name}")


definition = json.loads((root / "jobs/aws-batch/job-definition.json").read_text())
check("RegisterJobDefinition", definition, "job-definition.json")
command = definition["containerProperties"]["command"]
if "Ref::stage" not in command or "Ref::job" not in command:
    errors.append("job-definition.json: the command must take Ref::stage and Ref::job")
submit = {
    "jobName": "padim-extract",
    "jobQueue": "queue",
    "jobDefinition": definition["jobDefinitionName"],
    "parameters": {"stage": "extract", "job": "/jobs/job.toml"},
    "containerOverrides": {"environment": [{"name": "PADIM_SHARDS", "value": "4"}]},
    "arrayProperties": {"size": 4},
    "dependsOn": [{"jobId": "0123"}],
}
check("SubmitJob", submit, "submit.sh (array job)")

for error in errors:
    print("error:", error, file=sys.stderr)
sys.exit(1 if errors else 0)
