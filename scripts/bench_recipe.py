#!/usr/bin/env python3
"""The reference recipe end to end in Python, for the end-to-end benchmark (`make bench-e2e`).

Two implementations over the same split (padim's `split/manifest.csv`, so the images are the same):
- `torch`: the plain PyTorch recipe as a user would write it: PIL and torchvision transforms, the
  backbone in eager mode (scripts/reference.py's trunk), every training embedding in memory, per-patch
  mean and covariance + 0.01 I, inverse, Mahalanobis maps, bilinear resize, Gaussian blur (sigma 4,
  33x33), the mean score, calibration min-max, Youden threshold, test accuracy.
- `anomalib`: anomalib's PaDiM model (`PadimModel`, its feature extractor, Gaussian fit and anomaly
  maps) with random initialisation, on the same inputs; its image score is its own (the map's max).
- `anomalib-engine`: the same through anomalib's `Folder` datamodule and Lightning `Engine`.

Prints one JSON line: seconds, test AUROC and accuracy. Peak memory is measured by the caller.
"""
import argparse
import csv
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import roc_auc_score, roc_curve
from torchvision import transforms
from torchvision.transforms.functional import gaussian_blur

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def read_manifest(path, base):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    split = {}
    for row in rows:
        split.setdefault(row["split"], []).append((os.path.join(base, row["path"]), row["label"] != "Negative"))
    return split


def loader(mean, std):
    pipeline = transforms.Compose([
        transforms.Resize((256, 256), interpolation=transforms.InterpolationMode.BILINEAR, antialias=True),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])

    def batches(items, size=32):
        for start in range(0, len(items), size):
            chunk = items[start:start + size]
            images = torch.stack([pipeline(Image.open(p).convert("RGB")) for p, _ in chunk])
            yield images, [label for _, label in chunk]

    return batches


def evaluate(calibration, test):
    """Calibration min-max of the maps, ROC, Youden threshold; test AUROC and accuracy."""
    (cal_scores, cal_labels, lo, hi), (test_scores, test_labels) = calibration, test
    norm = lambda s: (np.asarray(s) - lo) / (hi - lo)  # noqa: E731
    fpr, tpr, thresholds = roc_curve(cal_labels, norm(cal_scores))
    threshold = thresholds[np.argmax(tpr - fpr)]
    predicted = norm(test_scores) >= threshold
    accuracy = float(np.mean(predicted == np.asarray(test_labels)))
    return float(roc_auc_score(test_labels, norm(test_scores))), accuracy


def calibrate_and_test(batches, split, score_batch):
    """Scores the calibration and test splits with `score_batch(images) -> (maps, image scores)`,
    normalises by the calibration maps' range, and returns test AUROC and accuracy."""

    def scores(items):
        out, labels, lo, hi = [], [], float("inf"), float("-inf")
        with torch.no_grad():
            for images, batch_labels in batches(items):
                maps, image_scores = score_batch(images)
                lo, hi = min(lo, maps.min().item()), max(hi, maps.max().item())
                out += image_scores.tolist()
                labels += batch_labels
        return out, labels, lo, hi

    calibration = scores(split["calibration"])
    test_scores, test_labels, _, _ = scores(split["test"])
    return evaluate(calibration, (test_scores, test_labels))


def run_torch(args, split):
    from reference import NORMALIZATION, load_model, trunk

    model = load_model(args.backbone, args.weights)
    batches = loader(*NORMALIZATION[args.backbone])
    n_channels = {"resnet18": 448, "efficientnet-lite0": 176}[args.backbone]
    generator = torch.Generator().manual_seed(args.seed)
    keep = torch.randperm(n_channels, generator=generator)[: args.channels]

    def embed(images):
        with torch.no_grad():
            maps = trunk(model, args.backbone, images, "block-output")
            size = maps[0].shape[-2:]
            full = torch.cat([maps[0]] + [F.interpolate(m, size=size, mode="nearest") for m in maps[1:]], 1)
            return full[:, keep]

    train = torch.cat([embed(images) for images, _ in batches(split["train"])])
    n, c, h, w = train.shape
    x = train.reshape(n, c, h * w).permute(2, 0, 1).double()  # [P, N, C]
    mean = x.mean(1, keepdim=True)
    centred = x - mean
    cov = centred.transpose(1, 2) @ centred / (n - 1) + 0.01 * torch.eye(c, dtype=torch.float64)
    precision = torch.linalg.inv(cov)
    del train, x, centred, cov

    def score_batch(images):
        e = embed(images).reshape(len(images), c, h * w).permute(2, 0, 1).double() - mean
        d = torch.einsum("pbc,pcd,pbd->bp", e, precision, e).clamp_min(0).sqrt().float().reshape(-1, 1, h, w)
        m = F.interpolate(d, size=(224, 224), mode="bilinear", align_corners=False)
        m = gaussian_blur(m, kernel_size=33, sigma=4.0)
        return m, m.mean((1, 2, 3))

    return calibrate_and_test(batches, split, score_batch)


def run_anomalib(args, split):
    from anomalib.models.image.padim.torch_model import PadimModel

    torch.manual_seed(args.seed)
    model = PadimModel(backbone="resnet18", layers=["layer1", "layer2", "layer3"], pre_trained=False,
                       n_features=args.channels)
    batches = loader([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    model.train()
    embeddings = []
    with torch.no_grad():
        for images, _ in batches(split["train"]):
            embeddings.append(model(images))
        model.gaussian.fit(torch.vstack(embeddings))
    del embeddings
    model.eval()

    def score_batch(images):
        result = model(images)
        return result.anomaly_map, result.pred_score.flatten()

    return calibrate_and_test(batches, split, score_batch)


def run_anomalib_engine(args, split):
    """anomalib as its documentation runs it: a `Folder` datamodule, `Padim`, Lightning's `Engine`
    fit (with validation) and test. The folders are symlinks to the same images: the training
    split as normal, calibration and test together as the test set, from which anomalib draws its
    own validation part of the calibration split's size (it cannot take a given one). No images are
    drawn (`visualizer=False`): padim's report draws only montages."""
    import tempfile

    from anomalib.data import Folder
    from anomalib.engine import Engine
    from anomalib.models import Padim

    root = tempfile.mkdtemp(prefix="anomalib-bench-")
    folders = {("train", False): "train/good", ("test", False): "test/good", ("test", True): "test/crack"}
    for name in set(folders.values()):
        os.makedirs(os.path.join(root, name))
    evaluated = 0
    for split_name, items in split.items():
        for i, (path, anomalous) in enumerate(items):
            kind = "train" if split_name == "train" else "test"
            evaluated += kind == "test"
            link = os.path.join(root, folders[(kind, anomalous)], f"{split_name}-{i:05d}.jpg")
            os.symlink(path, link)
    datamodule = Folder(
        name="concrete", root=root, normal_dir="train/good", abnormal_dir="test/crack",
        normal_test_dir="test/good", train_batch_size=32, eval_batch_size=32, num_workers=0,
        val_split_mode="from_test", val_split_ratio=len(split["calibration"]) / evaluated, seed=args.seed,
    )
    model = Padim(backbone="resnet18", pre_trained=False, n_features=args.channels, visualizer=False)
    engine = Engine(accelerator="cpu", devices=1, logger=False, default_root_dir=os.path.join(root, "results"),
                    enable_progress_bar=False)
    engine.fit(model=model, datamodule=datamodule)
    results = engine.test(model=model, datamodule=datamodule, verbose=False)
    return float(results[0]["image_AUROC"]), None


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("implementation", choices=["torch", "anomalib", "anomalib-engine"])
    parser.add_argument("--manifest", required=True, help="padim's split/manifest.csv")
    parser.add_argument("--base", required=True, help="the dataset folder the manifest's paths are relative to")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--weights", help="safetensors weights (torch)")
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    split = read_manifest(args.manifest, args.base)
    run = {"torch": run_torch, "anomalib": run_anomalib, "anomalib-engine": run_anomalib_engine}[args.implementation]
    auroc, accuracy = run(args, split)
    print(json.dumps({"seconds": time.time() - start, "test-auroc": auroc, "accuracy": accuracy}))


if __name__ == "__main__":
    main()
