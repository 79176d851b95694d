#!/usr/bin/env python3
"""Threshold rules and accuracy forecasts on replicates of a job, before they went into the report.

Each replicate is a finished run (scripts/replicates.py): its headline model and image score (the job's
own choice on its calibration split, from report/metrics.json) and every image's normalised score
(report/scores.csv). Per rule, the threshold is chosen on the replicate's calibration split alone and
applied to its test split; the table gives test accuracy (mean, sd, 10th percentile), FPR, FNR and the
gap to the best threshold in hindsight (on that test split). Then, per forecast method, how often its
90% interval (from the calibration split alone) holds the replicate's test accuracy, and its width.

Usage: threshold_rules.py RUN_DIR [RUN_DIR ...] [--normal Negative] [--resamples 1000]
"""
import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

import numpy as np
from scipy.special import ndtr


def load(run: Path, normal: set[str]):
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    model, kind = metrics["headline-model"], metrics["headline-score"]
    splits = {"calibration": ([], []), "test": ([], []), "train": ([], [])}
    with open(run / "report" / "scores.csv") as f:
        for row in csv.DictReader(f):
            if row["model"] != model or row["split"] not in splits:
                continue
            scores, truth = splits[row["split"]]
            scores.append(float(row[f"{kind}_normalised"]))
            truth.append(row["label"] not in normal)
    return {k: (np.array(s), np.array(t)) for k, (s, t) in splits.items()}


def roc(scores, truth):
    """Distinct thresholds (descending, +inf first) with TP and FP counts at each (score >= t)."""
    order = np.argsort(-scores, kind="stable")
    s, a = scores[order], truth[order]
    last = np.r_[s[1:] != s[:-1], True]
    tp, fp = np.cumsum(a)[last], np.cumsum(~a)[last]
    return np.r_[np.inf, s[last]], np.r_[0, tp], np.r_[0, fp], a.sum(), (~a).sum()


def interval_midpoint(thresholds, best):
    """The midpoint of the widest interval of thresholds that give one of the `best` points."""
    lower = np.r_[thresholds[1:], -np.inf]
    widths = [(thresholds[i] - lower[i], i) for i in best]
    _, i = max(widths)
    return thresholds[i] if not np.isfinite(lower[i]) else (thresholds[i] + lower[i]) / 2


def silverman(x):
    sd = x.std(ddof=1)
    iqr = np.subtract(*np.percentile(x, [75, 25]))
    spread = min(sd, iqr / 1.34) if iqr > 0 else sd
    return 0.9 * spread * len(x) ** -0.2


def shrunk(x):
    """The sample and bandwidth of a variance-corrected kernel density (Jones 1991): the points drawn
    towards their mean so that the density's variance is the sample's, not the sample's plus h^2."""
    h, var = silverman(x), x.var(ddof=1)
    factor = 1 / np.sqrt(1 + h * h / var) if var > 0 else 1.0
    return x.mean() + (x - x.mean()) * factor, h * factor


def smoothed_rates(t, neg, pos, h_neg, h_pos):
    """Smoothed (FPR, TPR) of threshold(s) t: each class's scores as a Gaussian kernel density."""
    t = np.atleast_1d(t)[:, None]
    return ndtr((neg[None, :] - t) / h_neg).mean(1), ndtr((pos[None, :] - t) / h_pos).mean(1)


def kde_threshold(scores, truth):
    neg, pos = scores[~truth], scores[truth]
    h_neg, h_pos = silverman(neg), silverman(pos)
    lo, hi = min(neg.min(), pos.min()), max(neg.max(), pos.max())
    grid = np.linspace(lo, hi, 512)
    fpr, tpr = smoothed_rates(grid, neg, pos, h_neg, h_pos)
    i = int(np.argmax(tpr - fpr))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    for _ in range(40):  # golden section on the bracket
        c, d = b - (b - a) / 1.618, a + (b - a) / 1.618
        jc = np.subtract(*smoothed_rates(c, neg, pos, h_neg, h_pos)[::-1])[0]
        jd = np.subtract(*smoothed_rates(d, neg, pos, h_neg, h_pos)[::-1])[0]
        a, b = (a, d) if jc >= jd else (c, b)
    return (a + b) / 2


def choose(rule, scores, truth):
    thresholds, tp, fp, p, n = roc(scores, truth)
    tpr, fpr = tp / p, fp / n
    if rule == "youden":
        return thresholds[int(np.argmax(tpr - fpr))]
    if rule == "youden-midpoint":
        j = tpr - fpr
        return interval_midpoint(thresholds, np.flatnonzero(j == j.max()))
    if rule == "eer":
        worst = np.maximum(fpr, 1 - tpr)
        return interval_midpoint(thresholds, np.flatnonzero(worst == worst.min()))
    if rule == "max-f1":
        f1 = np.where(tp > 0, 2 * tp / (2 * tp + fp + (p - tp)), 0)
        return thresholds[int(np.argmax(f1))]
    if rule == "kde":
        return kde_threshold(scores, truth)
    if rule == "kde-log":
        # The densities of log scores (shifted to start at a hundredth of the range above zero).
        shift = scores.min() - (scores.max() - scores.min()) / 100
        return np.exp(kde_threshold(np.log(scores - shift), truth)) + shift
    sys.exit(f"unknown rule {rule}")


def rates(scores, truth, t):
    flagged = scores >= t
    fpr = (flagged & ~truth).sum() / (~truth).sum()
    fnr = (~flagged & truth).sum() / truth.sum()
    return (flagged == truth).mean(), fpr, fnr


def hindsight(scores, truth):
    thresholds, tp, fp, p, n = roc(scores, truth)
    return ((tp + (n - fp)) / (p + n)).max()


def forecasts(rule, cal, test_counts, resamples, rng):
    """90% intervals for the test accuracy from the calibration split alone, by several methods."""
    scores, truth = cal
    neg, pos = scores[~truth], scores[truth]
    n_neg, n_pos = test_counts
    t_star = choose(rule, scores, truth)
    out = {}
    oob, smooth, chosen_smooth, b632, smooth_log, smooth_log_vc = [], [], [], [], [], []
    shift = scores.min() - (scores.max() - scores.min()) / 100
    log_t = np.log(t_star - shift)
    app_fpr, app_fnr = (neg >= t_star).mean(), (pos < t_star).mean()
    for _ in range(resamples):
        i_neg = rng.integers(0, len(neg), len(neg))
        i_pos = rng.integers(0, len(pos), len(pos))
        bn, bp = neg[i_neg], pos[i_pos]
        # OOB: the rule on the resample, rated on the images left out of it.
        t_b = choose(rule, np.r_[bn, bp], np.r_[np.zeros(len(bn), bool), np.ones(len(bp), bool)])
        on, op = np.setdiff1d(np.arange(len(neg)), i_neg), np.setdiff1d(np.arange(len(pos)), i_pos)
        if len(on) and len(op):
            fpr_b, fnr_b = (neg[on] >= t_b).mean(), (pos[op] < t_b).mean()
            oob.append(1 - (n_neg * fpr_b + n_pos * fnr_b) / (n_neg + n_pos))
            f632, n632 = 0.368 * app_fpr + 0.632 * fpr_b, 0.368 * app_fnr + 0.632 * fnr_b
            b632.append(1 - (n_neg * f632 + n_pos * n632) / (n_neg + n_pos))
        # Smoothed: the resample's kernel densities rate the chosen threshold; the test draws add
        # binomial noise.
        f, t = smoothed_rates(t_star, bn, bp, silverman(bn), silverman(bp))
        fp_b, fn_b = rng.binomial(n_neg, f[0]), rng.binomial(n_pos, 1 - t[0])
        smooth.append(1 - (fp_b + fn_b) / (n_neg + n_pos))
        # The same on the log scale of the rule `kde` (the whole sample's shift).
        ln, lp = np.log(bn - shift), np.log(bp - shift)
        f, t = smoothed_rates(log_t, ln, lp, silverman(ln), silverman(lp))
        fp_b, fn_b = rng.binomial(n_neg, f[0]), rng.binomial(n_pos, 1 - t[0])
        smooth_log.append(1 - (fp_b + fn_b) / (n_neg + n_pos))
        (sn, hn), (sp, hp) = shrunk(ln), shrunk(lp)
        f, t = smoothed_rates(log_t, sn, sp, hn, hp)
        fp_b, fn_b = rng.binomial(n_neg, f[0]), rng.binomial(n_pos, 1 - t[0])
        smooth_log_vc.append(1 - (fp_b + fn_b) / (n_neg + n_pos))
        # Smoothed with selection: the rule on the resample, rated by the whole sample's densities.
        f, t = smoothed_rates(t_b, neg, pos, silverman(neg), silverman(pos))
        fp_b, fn_b = rng.binomial(n_neg, f[0]), rng.binomial(n_pos, 1 - t[0])
        chosen_smooth.append(1 - (fp_b + fn_b) / (n_neg + n_pos))
    for name, values in (("oob", oob), (".632", b632), ("smoothed", smooth), ("smoothed-log", smooth_log),
                         ("smoothed-log-vc", smooth_log_vc),
                         ("smoothed+selection", chosen_smooth)):
        out[name] = tuple(np.percentile(values, [5, 95]))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--normal", nargs="+", default=["Negative"])
    parser.add_argument("--rules", nargs="+", default=["youden", "youden-midpoint", "kde", "kde-log", "eer", "max-f1"])
    parser.add_argument("--forecast-rules", nargs="*", default=["youden", "youden-midpoint", "kde", "kde-log"])
    parser.add_argument("--resamples", type=int, default=400)
    args = parser.parse_args()
    runs = [r for r in args.runs if (r / "report" / "scores.csv").exists()]
    data = [load(r, set(args.normal)) for r in runs]
    print(f"{len(runs)} replicates\n")
    print("| rule | test accuracy | sd | 10th percentile | FPR | FNR | gap to hindsight |")
    print("|---|---|---|---|---|---|---|")
    results = {}
    for rule in args.rules:
        rows = []
        for d in data:
            t = choose(rule, *d["calibration"])
            acc, fpr, fnr = rates(*d["test"], t)
            rows.append((acc, fpr, fnr, hindsight(*d["test"]) - acc))
        results[rule] = rows
        acc = [r[0] for r in rows]
        print(
            f"| {rule} | {statistics.fmean(acc):.4f} | {statistics.stdev(acc):.4f} | {np.percentile(acc, 10):.4f} "
            f"| {statistics.fmean(r[1] for r in rows):.4f} | {statistics.fmean(r[2] for r in rows):.4f} "
            f"| {statistics.fmean(r[3] for r in rows):.4f} |"
        )
    rng = np.random.default_rng(0)
    print("\n| rule | forecast | coverage of 90% intervals | mean width |")
    print("|---|---|---|---|")
    for rule in args.forecast_rules:
        per_method = {}
        for d, (acc, *_rest) in zip(data, results[rule]):
            counts = ((~d["test"][1]).sum(), d["test"][1].sum())
            for method, (lo, hi) in forecasts(rule, d["calibration"], counts, args.resamples, rng).items():
                per_method.setdefault(method, []).append((lo <= acc <= hi, hi - lo))
        for method, hits in per_method.items():
            cover = sum(h for h, _ in hits) / len(hits)
            print(f"| {rule} | {method} | {cover:.2f} | {statistics.fmean(w for _, w in hits):.4f} |")


if __name__ == "__main__":
    main()
