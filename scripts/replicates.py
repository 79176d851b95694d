#!/usr/bin/env python3
"""Replicates of a job's protocol on other images, to compare settings that the job's own calibration
split cannot tell apart (a crop, an input size) without looking at its test split.

Each arm is the base job with some `[preprocess]`/`[backbone]`/`[score]`/`[fit]` keys replaced; each
replicate is the job's split drawn with another seed from another data root (for the concrete job:
../shared/data/concrete-crack-scale, 10,000 images none of which is in the main job's data). Every
(arm, seed) is an ordinary `padim run` of a generated job file under OUT; the table printed at the end
gives each arm's headline (the job's own `report.model`/`report.score` choice on that replicate's
calibration split) and the mean +- sd over seeds, with paired wins against the first arm.

Usage:
  replicates.py --job configs/concrete-crack.toml --root ../shared/data/concrete-crack-scale \
      --seeds 1 2 3 --out runs/replicates \
      --arm crop272='preprocess.resize=[272, 272]' \
      --arm full240='preprocess.resize=[240, 240]' 'preprocess.crop=[240, 240]'
Options: --padim PATH (default $PADIM or target/release/padim), --prune (delete each run's embeddings
once its report is done; the models, scores and reports stay, so that reports can be redone),
--rules RULE ... (threshold rules to compare: each replicate's report is redone with each rule, its
metrics.json kept as RUN/rules/RULE.json, and a table gives per arm and rule the test accuracy's mean,
sd and 10th percentile, FPR, FNR, the gap to the best threshold in hindsight on that test split, and
how often the report's 90% forecast interval held the test accuracy; the arm's own report is redone
last).

The threshold table of docs/results.md:
  replicates.py --job configs/concrete-crack.toml --root ../shared/data/concrete-crack-scale \
      --seeds $(seq 1 20) --out runs/replicates-threshold --arm job --prune \
      --rules youden youden-midpoint kde eer max-f1
"""
import argparse
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tomllib
from pathlib import Path


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", required=True, type=Path)
    parser.add_argument("--root", required=True, type=Path, help="the replicates' data root")
    parser.add_argument("--seeds", required=True, type=int, nargs="+")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--arm", required=True, nargs="+", action="append", metavar="NAME=SECTION.KEY=VALUE")
    parser.add_argument("--padim", default=os.environ.get("PADIM", "target/release/padim"))
    parser.add_argument("--prune", action="store_true")
    parser.add_argument("--rules", nargs="*", default=[], metavar="RULE")
    return parser.parse_args()


def set_key(text: str, section: str, key: str, value: str, job: Path) -> str:
    """Replaces `key = ...` in `[section]` of a job file's text (the key must be there)."""
    lines = text.split("\n")
    current = None
    for i, line in enumerate(lines):
        header = re.match(r"^\[([a-z-]+)\]\s*$", line)
        if header:
            current = header.group(1)
        elif current == section and re.match(rf"^{re.escape(key)}\s*=", line):
            lines[i] = f"{key} = {value}"
            return "\n".join(lines)
    sys.exit(f"{job}: no `{key}` in [{section}] to replace; add it to the job file")


def absolute(job: Path, value: str) -> str:
    return value if "://" in value else str((job.parent / value).resolve())


def job_text(base: Path, root: Path, seed: int, output: Path, overrides: list[str]) -> str:
    text = base.read_text()
    parsed = tomllib.loads(text)
    # The generated file lives elsewhere: make the base's relative paths absolute.
    text = set_key(text, "backbone", "weights", json.dumps(absolute(base, parsed["backbone"]["weights"])), base)
    text = set_key(text, "dataset", "root", json.dumps([str(root.resolve())]), base)
    text = set_key(text, "split", "seed", str(seed), base)
    text = set_key(text, "run", "output", json.dumps(str(output.resolve())), base)
    for override in overrides:
        target, _, value = override.partition("=")
        section, _, key = target.partition(".")
        if not key or not value:
            sys.exit(f"--arm: `{override}` is not SECTION.KEY=VALUE")
        text = set_key(text, section, key, value, base)
    tomllib.loads(text)  # still valid TOML
    return text


def headline(metrics_path: Path) -> dict:
    metrics = json.loads(metrics_path.read_text())
    for model in metrics["models"]:
        if model["model"] == metrics["headline-model"] and model["score"] == metrics["headline-score"]:
            return {
                "model": f"{model['model']} ({model['score']})",
                "calibration": model["calibration"]["auroc"],
                "test": model["test"]["auroc"],
                "accuracy": model["test"]["accuracy"],
            }
    sys.exit(f"{metrics_path}: the headline model is not among its models")


def headline_entry(metrics: dict) -> dict:
    for model in metrics["models"]:
        if model["model"] == metrics["headline-model"] and model["score"] == metrics["headline-score"]:
            return model
    sys.exit("metrics.json: the headline model is not among its models")


def hindsight_accuracy(run: Path, metrics: dict, normal: list[str]) -> float:
    """The best test accuracy of any threshold, from the headline model's normalised test scores."""
    column = f"{metrics['headline-score']}_normalised"
    scores = []
    with open(run / "report" / "scores.csv") as f:
        for row in csv.DictReader(f):
            if row["model"] == metrics["headline-model"] and row["split"] == "test":
                scores.append((float(row[column]), row["label"] not in normal))
    scores.sort(key=lambda s: -s[0])
    anomalous = sum(a for _, a in scores)
    best = correct = len(scores) - anomalous  # nothing flagged
    for i, (score, truth) in enumerate(scores):
        correct += 1 if truth else -1
        if i + 1 == len(scores) or scores[i + 1][0] != score:
            best = max(best, correct)
    return best / len(scores)


def with_threshold(text: str, rule: str) -> str:
    """The job's text with `threshold = "RULE"` in its [report] section (added where it has none)."""
    lines = text.split("\n")
    current, report_at = None, None
    for i, line in enumerate(lines):
        header = re.match(r"^\[([a-z-]+)\]\s*$", line)
        if header:
            current = header.group(1)
            report_at = i if current == "report" else report_at
        elif current == "report" and re.match(r"^threshold\s*=", line):
            lines[i] = f'threshold = "{rule}"'
            return "\n".join(lines)
    if report_at is None:
        return text.rstrip("\n") + f'\n\n[report]\nthreshold = "{rule}"\n'
    lines.insert(report_at + 1, f'threshold = "{rule}"')
    return "\n".join(lines)


def compare_rules(args, name: str, seed: int, overrides: list[str], run: Path, job: Path) -> dict:
    """Redoes the replicate's report under each rule (kept as RUN/rules/RULE.json), then its own."""
    (run / "rules").mkdir(exist_ok=True)
    out = {}
    for rule in args.rules:
        kept = run / "rules" / f"{rule}.json"
        if not kept.exists():
            variant = args.out / f"{name}-s{seed}.{rule}.toml"
            variant.write_text(with_threshold(job_text(args.job, args.root, seed, run, overrides), rule))
            subprocess.run([args.padim, "report", "--force", "--quiet", str(variant)], check=True)
            shutil.copyfile(run / "report" / "metrics.json", kept)
        out[rule] = json.loads(kept.read_text())
    subprocess.run([args.padim, "report", "--force", "--quiet", str(job)], check=True)
    normal = tomllib.loads(job.read_text())["dataset"]["normal"]
    best = hindsight_accuracy(run, json.loads((run / "report" / "metrics.json").read_text()), normal)
    rows = {}
    for rule, metrics in out.items():
        entry = headline_entry(metrics)
        test, forecast = entry["test"], entry.get("forecast")
        c = test["confusion"]
        rows[rule] = {
            "accuracy": test["accuracy"],
            "fpr": c["fp"] / max(c["fp"] + c["tn"], 1),
            "fnr": c["fn"] / max(c["fn"] + c["tp"], 1),
            "gap": best - test["accuracy"],
            "held": forecast is not None
            and forecast["accuracy"]["low"] <= test["accuracy"] <= forecast["accuracy"]["high"],
            "width": forecast["accuracy"]["high"] - forecast["accuracy"]["low"] if forecast else float("nan"),
        }
    return rows


def rules_table(args, arms, by_rule: dict):
    print("\n| arm | threshold rule | test accuracy | sd | 10th percentile | FPR | FNR | gap to hindsight "
          "| forecast held (90%) | forecast width |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, _ in arms:
        for rule in args.rules:
            rows = [by_rule[name, s][rule] for s in args.seeds]
            accuracy = [r["accuracy"] for r in rows]
            tenth = statistics.quantiles(accuracy, n=10, method="inclusive")[0] if len(accuracy) > 1 else accuracy[0]
            mean = lambda key: statistics.fmean(r[key] for r in rows)  # noqa: E731
            print(
                f"| {name} | {rule} | {statistics.fmean(accuracy):.4f} "
                f"| {statistics.stdev(accuracy) if len(accuracy) > 1 else 0:.4f} | {tenth:.4f} | {mean('fpr'):.4f} "
                f"| {mean('fnr'):.4f} | {mean('gap'):.4f} | {sum(r['held'] for r in rows)} of {len(rows)} "
                f"| {mean('width'):.4f} |"
            )


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 else f"{mean:.4f}"


def main():
    args = parse_args()
    arms = []
    for arm in args.arm:
        name, _, first = arm[0].partition("=")
        arms.append((name, [o for o in [first, *arm[1:]] if o]))
    args.out.mkdir(parents=True, exist_ok=True)
    results, by_rule = {}, {}
    for name, overrides in arms:
        for seed in args.seeds:
            run = args.out / f"{name}-s{seed}"
            job = args.out / f"{name}-s{seed}.toml"
            job.write_text(job_text(args.job, args.root, seed, run, overrides))
            if args.rules and (run / "report" / "metrics.json").exists():
                # Only the report differs between rules: it is redone below, whatever job made it.
                print(f"== {name}, seed {seed}: reports of {run}", flush=True)
            else:
                print(f"== {name}, seed {seed}: {args.padim} run {job}", flush=True)
                subprocess.run([args.padim, "run", str(job)], check=True)
            if args.rules:
                by_rule[name, seed] = compare_rules(args, name, seed, overrides, run, job)
            results[name, seed] = headline(run / "report" / "metrics.json")
            if args.prune:
                for path in run.glob("extract/embeddings-*.parquet"):
                    path.unlink()

    print("\n| arm | seed | headline model | calibration AUROC | test AUROC | test accuracy |")
    print("|---|---|---|---|---|---|")
    for (name, seed), r in results.items():
        print(f"| {name} | {seed} | {r['model']} | {r['calibration']:.4f} | {r['test']:.4f} | {r['accuracy']:.4f} |")
    first = arms[0][0]
    print(f"\n| arm | calibration AUROC | test AUROC | test accuracy | accuracy above {first} |")
    print("|---|---|---|---|---|")
    for name, _ in arms:
        rows = [results[name, s] for s in args.seeds]
        wins = sum(results[name, s]["accuracy"] > results[first, s]["accuracy"] for s in args.seeds)
        print(
            f"| {name} | {spread([r['calibration'] for r in rows])} | {spread([r['test'] for r in rows])} "
            f"| {spread([r['accuracy'] for r in rows])} | {'-' if name == first else f'{wins} of {len(args.seeds)}'} |"
        )
    if args.rules:
        rules_table(args, arms, by_rule)


if __name__ == "__main__":
    main()
