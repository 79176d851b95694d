#!/usr/bin/env python3
"""Independent references for padim's report metrics, run by the Rust tests in the project's venv.

Reads JSON on stdin and prints JSON. `image`: scikit-learn's ROC AUC, average precision, the ROC
points and the thresholds of maximal Youden's J and F1. `pro`: per-region overlap integrated to an FPR
limit, with scipy's connected-component labelling (8-connectivity), computed threshold by threshold.
`kde`: the threshold rule `kde` with scipy's Gaussian kernel densities (`gaussian_kde`, its exact
distribution function) on the log scale, the threshold of the largest smoothed Youden's J by a
dense scan and scipy's bounded scalar minimiser, and the variance-corrected densities' rates there.
"""
import json
import sys

import numpy as np


def image(data):
    from sklearn.metrics import average_precision_score, f1_score, roc_auc_score, roc_curve

    scores = np.array(data["scores"], dtype=np.float64)
    labels = np.array(data["labels"], dtype=bool)
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    youden = thresholds[int(np.argmax(tpr - fpr))]
    f1s = [f1_score(labels, scores >= t, zero_division=0.0) for t in thresholds[1:]]
    best_f1 = thresholds[1:][int(np.argmax(f1s))]
    return {
        "auc": roc_auc_score(labels, scores),
        "ap": average_precision_score(labels, scores),
        "fpr": fpr.tolist(),
        "tpr": tpr.tolist(),
        "youden": float(youden),
        "max_f1": float(best_f1),
        "max_f1_value": float(max(f1s)),
    }


def pro(data):
    from scipy.ndimage import label

    masks = np.array(data["masks"], dtype=bool)  # [n, h, w]
    scores = np.array(data["scores"], dtype=np.float64)
    max_fpr = data["max_fpr"]
    regions = []
    for m in masks:
        labelled, n = label(m, structure=np.ones((3, 3)))
        regions.extend(labelled == k for k in range(1, n + 1))
    normal = ~masks
    points = [(0.0, 0.0)]
    for t in np.unique(scores)[::-1]:
        predicted = scores >= t
        fpr = (predicted & normal).sum() / normal.sum()
        overlaps = [np.logical_and(predicted[i], r).sum() / r.sum() for i, rs in enumerate(per_image_regions(masks)) for r in rs]
        points.append((fpr, float(np.mean(overlaps))))
    fprs, pros = np.array(points).T
    # Integrate up to max_fpr, interpolating the last segment.
    area = 0.0
    for i in range(1, len(fprs)):
        f0, f1, p0, p1 = fprs[i - 1], fprs[i], pros[i - 1], pros[i]
        if f1 >= max_fpr:
            t = (max_fpr - f0) / (f1 - f0) if f1 > f0 else 0.0
            area += (max_fpr - f0) * (p0 + p0 + t * (p1 - p0)) / 2
            break
        area += (f1 - f0) * (p0 + p1) / 2
    return {"pro": area / max_fpr, "regions": len(regions)}


def kde(data):
    from scipy.optimize import minimize_scalar
    from scipy.stats import gaussian_kde

    scores = np.array(data["scores"], dtype=np.float64)
    labels = np.array(data["labels"], dtype=bool)
    shift = scores.min() - (scores.max() - scores.min()) / 100
    logs = np.log(scores - shift)

    def silverman(x):
        iqr = np.subtract(*np.percentile(x, [75, 25]))
        sd = x.std(ddof=1)
        return 0.9 * (min(sd, iqr / 1.34) if iqr > 0 else sd) * len(x) ** -0.2

    def density(x, h):
        # gaussian_kde's bandwidth is its factor times the data's sd (ddof=1).
        return gaussian_kde(x, bw_method=h / x.std(ddof=1))

    def above(d, t):
        return d.integrate_box_1d(t, np.inf)

    normal, anomalous = logs[~labels], logs[labels]
    dn, da = density(normal, silverman(normal)), density(anomalous, silverman(anomalous))

    def j(t):
        return above(da, t) - above(dn, t)

    grid = np.linspace(logs.min(), logs.max(), 4001)
    i = int(np.argmax([j(t) for t in grid]))
    best = minimize_scalar(lambda t: -j(t), bounds=(grid[max(i - 1, 0)], grid[min(i + 1, 4000)]),
                           method="bounded", options={"xatol": 1e-12})

    def corrected(x):
        h, var = silverman(x), x.var(ddof=1)
        factor = 1 / np.sqrt(1 + h * h / var)
        return density(x.mean() + (x - x.mean()) * factor, h * factor)

    cn, ca = corrected(normal), corrected(anomalous)
    return {
        "threshold": float(np.exp(best.x) + shift),
        "j": float(-best.fun),
        "corrected_rates": [float(above(cn, best.x)), float(above(ca, best.x))],
        "log_threshold": float(best.x),
    }


def per_image_regions(masks):
    from scipy.ndimage import label

    out = []
    for m in masks:
        labelled, n = label(m, structure=np.ones((3, 3)))
        out.append([labelled == k for k in range(1, n + 1)])
    return out


if __name__ == "__main__":
    request = json.load(sys.stdin)
    print(json.dumps({"image": image, "pro": pro, "kde": kde}[request["kind"]](request)))
