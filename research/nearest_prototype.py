#!/usr/bin/env python3
"""Prototype of a position-conditioned nearest-neighbour patch score, on a finished run's embeddings,
next to the per-position Gaussian that padim fits: evidence for a design, not part of the pipeline.

Each patch of an evaluated image is compared with the same grid position of every training image (or
the positions within +- radius cells); its anomaly score is the L2 distance to the nearest of them (the
mean of the k nearest with --k). With --aggregate 3x3 each embedding is first replaced by the mean of
its 3x3 neighbourhood on the grid (valid cells only, stride 1, as PatchCore's local aggregation); 3x3s2
also halves the grid. Maps are upsampled to the job's input and smoothed with the job's Gaussian
(sigma, kernel size) as the score stage does; image scores are the map's mean, top fraction
(score.top-fraction, default 0.01) and max. Prints image AUROC per rule and, where the job has masks,
pixel AUROC, for each split asked for: choose on calibration, read test only as the outcome.

Usage (the magnetic-tile job's layers 2+3 are embedding channels 24..176):
  .venv/bin/python research/nearest_prototype.py --job configs/magnetic-tile.toml \
      --channels 24:176 --aggregate 3x3 --splits calibration
Needs the job's run folder (its extract stage done, one shard) and, for pixel AUROC, its masks.
"""
import argparse
import tomllib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", required=True, type=Path)
    parser.add_argument("--channels", required=True, help="embedding channels FIRST:END (end exclusive)")
    parser.add_argument("--aggregate", choices=["none", "3x3", "3x3s2"], default="3x3")
    parser.add_argument("--radius", type=int, default=0)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--splits", default="calibration", help="comma-separated, e.g. calibration,test")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args()


def auroc(scores, labels):
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    # average ranks over ties
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    n1 = labels.sum()
    n0 = len(labels) - n1
    return (ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    job = tomllib.loads(args.job.read_text())
    base = args.job.parent
    run = base / job["run"]["output"]
    crop_h, crop_w = job["preprocess"]["crop"]
    sigma = job.get("score", {}).get("sigma", 4.0)
    size = job.get("score", {}).get("kernel-size", 33)
    top_fraction = job.get("score", {}).get("top-fraction", 0.01)
    roots = job["dataset"]["root"]
    roots = [roots] if isinstance(roots, str) else roots
    root = next((base / r for r in roots if (base / r).is_dir()), None)
    mask_pattern = job["dataset"].get("mask")
    normal = set(job["dataset"]["normal"])
    first, end = (int(v) for v in args.channels.split(":"))

    images = {r["image"]: r for r in pq.read_table(run / "extract/images-00000-of-00001.parquet").to_pylist()}
    columns = ["image", "y", "x"] + [f"c{i:04d}" for i in range(first, end)]
    table = pq.read_table(run / "extract/embeddings-00000-of-00001.parquet", columns=columns)
    ids, ys, xs = (table.column(c).to_numpy() for c in ("image", "y", "x"))
    height, width, k = int(ys.max()) + 1, int(xs.max()) + 1, end - first
    values = np.empty((len(ids), k), np.float16)
    for i in range(k):
        values[:, i] = table.column(3 + i).to_numpy()
    del table
    order = np.lexsort((xs, ys, ids))
    values, ids = values[order], ids[order]
    image_ids = np.unique(ids)
    embeddings = torch.from_numpy(values).view(len(image_ids), height, width, k)
    split = {i: images[i]["split"] for i in image_ids}

    def features(rows):
        batch = embeddings[rows].float().permute(0, 3, 1, 2)
        if args.aggregate == "3x3":
            batch = F.avg_pool2d(batch, 3, stride=1, padding=1, count_include_pad=False)
        elif args.aggregate == "3x3s2":
            batch = F.avg_pool2d(batch, 3, stride=2, padding=1, count_include_pad=False)
        return batch.permute(0, 2, 3, 1).contiguous()

    train = [n for n, i in enumerate(image_ids) if split[i] == "train"]
    bank = torch.cat([features(train[s : s + 50]) for s in range(0, len(train), 50)])
    grid_h, grid_w = bank.shape[1:3]
    bank_norms = (bank**2).sum(-1)
    taps = np.arange(size) - size // 2
    kernel = np.exp(-(taps**2) / (2 * sigma**2))
    kernel = torch.tensor(kernel / kernel.sum(), dtype=torch.float32)
    pad = size // 2

    def smooth(maps):
        t = F.interpolate(maps.view(-1, 1, grid_h, grid_w), size=(crop_h, crop_w), mode="bilinear", align_corners=False)
        t = F.conv2d(F.pad(t, (pad, pad, 0, 0), mode="reflect"), kernel.view(1, 1, 1, size))
        t = F.conv2d(F.pad(t, (0, 0, pad, pad), mode="reflect"), kernel.view(1, 1, size, 1))
        return t.view(-1, crop_h, crop_w)

    splits = args.splits.split(",")
    evaluated = [n for n, i in enumerate(image_ids) if split[i] in splits]
    rows_y, rows_x = torch.arange(grid_h), torch.arange(grid_w)
    results = {}
    for s in range(0, len(evaluated), 4):
        rows = evaluated[s : s + 4]
        query = features(rows)
        query_norms = (query**2).sum(-1)
        candidates = []
        for dy in range(-args.radius, args.radius + 1):
            for dx in range(-args.radius, args.radius + 1):
                iy = (rows_y + dy).clamp(0, grid_h - 1)
                ix = (rows_x + dx).clamp(0, grid_w - 1)
                shifted = bank[:, iy][:, :, ix]
                dot = torch.einsum("nhwc,thwc->nthw", query, shifted)
                candidates.append((query_norms[:, None] - 2 * dot + bank_norms[:, iy][:, :, ix][None]).clamp_min(0))
        nearest = torch.cat(candidates, 1).topk(args.k, dim=1, largest=False).values.sqrt().mean(1)
        maps = smooth(nearest)
        flat = maps.flatten(1)
        top = max(1, int(np.ceil(top_fraction * flat.shape[1])))
        for j, row in enumerate(rows):
            results[image_ids[row]] = (
                flat[j].mean().item(),
                flat[j].topk(top).values.mean().item(),
                flat[j].max().item(),
                maps[j].numpy(),
            )

    print(f"aggregate {args.aggregate}, radius {args.radius}, k {args.k}, channels {first}:{end}, grid {grid_h}x{grid_w}")
    for name in splits:
        chosen = [i for i in results if split[i] == name]
        labels = [images[i]["label"] not in normal for i in chosen]
        line = f"{name}: image AUROC mean {auroc([results[i][0] for i in chosen], labels):.4f}"
        line += f" top {auroc([results[i][1] for i in chosen], labels):.4f} max {auroc([results[i][2] for i in chosen], labels):.4f}"
        if mask_pattern and root is not None:
            pixel_scores, pixel_labels = [], []
            for i in chosen:
                path = root / images[i]["path"]
                mask_path = path.parent / mask_pattern.format(stem=path.stem)
                if mask_path.exists():
                    mask = Image.open(mask_path).convert("L").resize((crop_w, crop_h), Image.BILINEAR)
                    pixel_labels.append(np.asarray(mask).ravel() > 127)
                else:
                    pixel_labels.append(np.zeros(crop_h * crop_w, bool))
                pixel_scores.append(results[i][3].ravel())
            line += f", pixel AUROC {auroc(np.concatenate(pixel_scores), np.concatenate(pixel_labels)):.4f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
