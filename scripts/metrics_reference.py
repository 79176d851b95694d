#!/usr/bin/env python3
"""Independent references for padim's report metrics, run by the Rust tests in the project's venv.

Reads JSON on stdin and prints JSON. `image`: scikit-learn's ROC AUC, average precision, the ROC
points and the thresholds of maximal Youden's J and F1. `pro`: per-region overlap integrated to an FPR
limit, with scipy's connected-component labelling (8-connectivity), computed threshold by threshold.
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


def per_image_regions(masks):
    from scipy.ndimage import label

    out = []
    for m in masks:
        labelled, n = label(m, structure=np.ones((3, 3)))
        out.append([labelled == k for k in range(1, n + 1)])
    return out


if __name__ == "__main__":
    request = json.load(sys.stdin)
    print(json.dumps({"image": image, "pro": pro}[request["kind"]](request)))
