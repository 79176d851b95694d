#!/usr/bin/env python3
"""Prototype: variants of the magnetic-tile job judged on its calibration split only; evidence for
the README, not part of the pipeline. Touches no test image.

Each variant re-extracts EfficientNet-Lite0 features of the job's training and calibration images
(PyTorch, scripts/reference.py's trunk), fits a model of the training images and prints the
calibration image AUROC of the mean, top (1%) and max scores and the calibration pixel AUROC. The
maps are upsampled and smoothed as padim's score stage does (bilinear to the input, Gaussian sigma 4,
kernel 33, reflected edges).

  --model gaussian  one Gaussian per position (sample covariance + 0.01 I), padim's `all-l23`
  --model bank      the nearest training patch at any position (a PatchCore-style bank, features
                    3x3-averaged, the deep tap upsampled bilinearly), of a random `--bank` fraction
  --intensity       before the network: none | mean (per-image mean to 0.5) | std (mean 0.5,
                    standard deviation 0.2) | equalise (grey-level histogram equalisation)
  --size, --layers, --sigma   input size (224: square; 256x512: height x width), taps (1 = stride 4,
                    2 = stride 8, 3 = stride 16), smoothing

Usage (the job's split stage done; `--intensity none --model gaussian` reproduces padim's
calibration AUROCs of `all-l23` within 0.001):
  .venv/bin/python research/tile_prototypes.py runs/magnetic-tile ../shared/data/magnetic-tile \
      weights/efficientnet-lite0.safetensors --intensity std
"""
import argparse
import csv
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import roc_auc_score

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
from reference import load_model, trunk  # noqa: E402


def image(path, size, intensity):
    grey = Image.open(path).convert("L").resize((size[1], size[0]), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(grey, dtype=np.float32) / 255.0)
    if intensity == "mean":
        x = x - x.mean() + 0.5
    elif intensity == "std":
        x = (x - x.mean()) / (x.std() + 1e-6) * 0.2 + 0.5
    elif intensity == "equalise":
        ranks = torch.argsort(torch.argsort(x.flatten())).float()
        x = (ranks / (ranks.numel() - 1)).view_as(x)
    return (x.expand(3, -1, -1) - 127 / 255) / (128 / 255)


def features(model, batch, layers, bank):
    taps = trunk(model, "efficientnet-lite0", batch, "block-output")
    grid = taps[0].shape[-2:] if not bank else taps[min(layers) - 1].shape[-2:]
    out = []
    for layer in layers:
        f = taps[layer - 1]
        if bank:
            f = F.avg_pool2d(f, 3, 1, 1)
            f = F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
        else:
            f = F.interpolate(f, size=grid, mode="nearest")
        out.append(f)
    return torch.cat(out, 1)


def smooth(maps, sigma):
    size = 33
    taps = torch.arange(size) - size // 2
    kernel = torch.exp(-taps.float() ** 2 / (2 * sigma**2))
    kernel /= kernel.sum()
    maps = F.conv2d(F.pad(maps, (16, 16, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(maps, (0, 0, 16, 16), mode="reflect"), kernel.view(1, 1, -1, 1))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("root")
    p.add_argument("weights")
    p.add_argument("--model", choices=["gaussian", "bank"], default="gaussian")
    p.add_argument("--bank", type=float, default=0.1)
    p.add_argument("--intensity", choices=["none", "mean", "std", "equalise"], default="none")
    p.add_argument("--size", default="224")
    p.add_argument("--layers", default="2,3")
    p.add_argument("--sigma", type=float, default=4.0)
    a = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    layers = [int(v) for v in a.layers.split(",")]
    size = [int(v) for v in a.size.split("x")] * (1 if "x" in a.size else 2)
    rows = [r for r in csv.DictReader(open(f"{a.run}/split/manifest.csv")) if r["split"] in ("train", "calibration")]
    model = load_model("efficientnet-lite0", a.weights)
    bank = a.model == "bank"
    with torch.no_grad():
        chunks = []
        for i in range(0, len(rows), 32):
            batch = torch.stack([image(os.path.join(a.root, r["path"]), size, a.intensity) for r in rows[i : i + 32]])
            chunks.append(features(model, batch, layers, bank))
        emb = torch.cat(chunks)
    n, c, h, w = emb.shape
    train = torch.tensor([r["split"] == "train" for r in rows])
    cal_rows = [r for r in rows if r["split"] == "calibration"]
    if bank:
        patches = emb[train].permute(0, 2, 3, 1).reshape(-1, c)
        keep = torch.randperm(len(patches), generator=torch.Generator().manual_seed(0))[: int(a.bank * len(patches))]
        patches = patches[keep]
        squares = (patches**2).sum(1)
        queries = emb[~train].permute(0, 2, 3, 1).reshape(-1, c)
        dist = []
        for i in range(0, len(queries), 4096):
            q = queries[i : i + 4096]
            d2 = (q**2).sum(1, keepdim=True) - 2 * q @ patches.T + squares
            dist.append(d2.min(1).values.clamp_min(0).sqrt())
        dist = torch.cat(dist).view(-1, h, w)
    else:
        # Positions in chunks, to bound memory at large inputs.
        per_position = emb.permute(2, 3, 0, 1).reshape(h * w, n, c)
        dist = []
        for i in range(0, h * w, 512):
            x = per_position[i : i + 512].double()
            mean = x[:, train].mean(1, keepdim=True)
            dev = x[:, train] - mean
            cov = dev.transpose(1, 2) @ dev / (dev.shape[1] - 1) + 0.01 * torch.eye(c, dtype=torch.float64)
            chol = torch.linalg.cholesky(cov)
            z = torch.linalg.solve_triangular(chol, (x[:, ~train] - mean).transpose(1, 2), upper=False)
            dist.append(z.pow(2).sum(1).sqrt())
        dist = torch.cat(dist).T.reshape(-1, h, w).float()
    maps = F.interpolate(dist[:, None], size=tuple(size), mode="bilinear", align_corners=False)
    maps = smooth(maps, a.sigma)[:, 0]
    labels = np.array([r["label"] != "MT_Free" for r in cal_rows])
    flat = maps.flatten(1)
    k = max(1, int(0.01 * flat.shape[1]))
    scores = {"mean": flat.mean(1), "top": flat.topk(k, 1).values.mean(1), "max": flat.max(1).values}
    result = {name: roc_auc_score(labels, s.numpy()) for name, s in scores.items()}
    masks = []
    for r in cal_rows:
        mask = Image.open(os.path.join(a.root, os.path.splitext(r["path"])[0] + ".png")).convert("L")
        masks.append(torch.from_numpy(np.asarray(mask.resize((size[1], size[0]), Image.NEAREST)) > 127))
    result["pixel"] = roc_auc_score(torch.stack(masks).flatten().numpy(), maps.flatten().numpy())
    variant = f"{a.model} intensity={a.intensity} size={a.size} layers={a.layers} sigma={a.sigma}"
    if bank:
        variant += f" bank={a.bank}"
    print(variant, " ".join(f"{k} {v:.4f}" for k, v in result.items()), flush=True)


if __name__ == "__main__":
    main()
