#!/usr/bin/env python3
"""PyTorch reference implementation of padim's extract stage, run by the Rust tests and benchmarks.

It is written independently of the Rust code, from torchvision's and efficientnet-lite-pytorch's
modules: the parity tests compare the two. Subcommands write safetensors files or print JSON.
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from export_weights import build  # noqa: E402

NORMALIZATION = {
    "resnet18": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    "wide-resnet50-2": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    "efficientnet-lite0": ([127.0 / 255.0] * 3, [128.0 / 255.0] * 3),
    "efficientnet-lite1": ([127.0 / 255.0] * 3, [128.0 / 255.0] * 3),
    "efficientnet-lite2": ([127.0 / 255.0] * 3, [128.0 / 255.0] * 3),
}



def load_model(backbone, weights):
    model = build(backbone)
    model.load_state_dict(load_file(weights), strict=True)
    return model.eval()


def trunk(model, backbone, x, tap):
    """The three PaDiM feature maps: ResNet layer1..3; for an EfficientNet-Lite, the last block at
    strides 4, 8 and 16 (the block before each of the 2nd, 3rd and 4th downsampling blocks)."""
    outs = []

    def run(module, hooked, x, **kwargs):
        if tap == "block-output":
            y = module(x, **kwargs)
            outs.append(y)
            return y
        captured = []
        handle = hooked.register_forward_hook(lambda m, i, o: captured.append(o.clone()))
        y = module(x, **kwargs)
        handle.remove()
        outs.append(captured[0])
        return y

    if backbone.startswith("efficientnet"):
        downsampling = [i for i, block in enumerate(model._blocks) if block._depthwise_conv.stride[0] == 2]
        taps = [i - 1 for i in downsampling[1:4]]
        x = model._swish(model._bn0(model._conv_stem(x)))
        for index, block in enumerate(model._blocks[: taps[-1] + 1]):
            if index in taps:
                x = run(block, block._bn2, x)
            else:
                x = block(x)
    else:
        x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        for layer in (model.layer1, model.layer2, model.layer3):
            last = layer[-1]
            x = run(layer, last.bn3 if hasattr(last, "bn3") else last.bn2, x)
    return outs


def embed(features):
    first, second, third = features
    size = first.shape[-2:]
    return torch.cat(
        [first, F.interpolate(second, size=size, mode="nearest"), F.interpolate(third, size=size, mode="nearest")], 1
    )


def cmd_features(args):
    torch.manual_seed(args.seed)
    model = load_model(args.backbone, args.weights)
    x = torch.randn(args.batch, 3, args.height, args.width)
    with torch.no_grad():
        f1, f2, f3 = trunk(model, args.backbone, x, args.tap)
        logits = model(x)
        emb = embed([f1, f2, f3])
    save_file(
        {"input": x, "f1": f1.contiguous(), "f2": f2.contiguous(), "f3": f3.contiguous(), "logits": logits, "embedding": emb.contiguous()},
        args.out,
    )


def transform(backbone, resize, crop):
    from torchvision import transforms

    mean, std = NORMALIZATION[backbone]
    return transforms.Compose(
        [
            transforms.Resize((resize, resize)),
            transforms.CenterCrop(crop),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def load_images(paths, backbone, resize=256, crop=224):
    from PIL import Image

    t = transform(backbone, resize, crop)
    return torch.stack([t(Image.open(p).convert("RGB")) for p in paths])


def cmd_pipeline(args):
    model = load_model(args.backbone, args.weights)
    x = load_images(args.images, args.backbone)
    with torch.no_grad():
        emb = embed(trunk(model, args.backbone, x, args.tap))
    save_file({"input": x, "embedding": emb.contiguous()}, args.out)


def cmd_png(args):
    """Decodes images with PIL and writes them losslessly as PNG, to separate decoding from resizing."""
    import os

    from PIL import Image

    for path in args.images:
        name = os.path.splitext(os.path.basename(path))[0] + ".png"
        Image.open(path).convert("RGB").save(os.path.join(args.out_dir, name))


def cmd_fit(args):
    """The recipe's fit in plain PyTorch (f64) from the embeddings table, compared with padim's model:
    prints the largest relative differences of the means and the inverse covariances."""
    import glob
    import json as _json

    import numpy as np
    import pyarrow.parquet as pq
    from safetensors.numpy import load_file as load_numpy

    images = pq.read_table(glob.glob(f"{args.run_dir}/extract/images-*.parquet")).to_pydict()
    train = {i for i, label, status in zip(images["image"], images["label"], images["status"]) if label in args.normal and status == "ok"}
    model = load_numpy(f"{args.run_dir}/fit/model-{args.subset}.safetensors")
    channels = model["channels"].tolist()
    columns = [f"c{c:04d}" for c in channels]
    table = pq.read_table(sorted(glob.glob(f"{args.run_dir}/extract/embeddings-*.parquet")), columns=["image"] + columns)
    ids = table.column("image").to_numpy()
    values = np.stack([table.column(c).to_numpy() for c in columns], axis=-1)  # [rows, k]
    keep = np.isin(ids, list(train))
    from safetensors import safe_open

    with safe_open(f"{args.run_dir}/fit/model-{args.subset}.safetensors", "np") as f:
        model_info = _json.loads(f.metadata()["padim"])
    # A model on a coarser grid (grid-factor f) holds the Gaussian of the patch where each f x f cell
    # starts: fitted here on the embedding grid, compared there, and every patch of a cell checked to
    # have the same Gaussian (the features were upsampled).
    factor = model_info.get("grid-factor", 1)
    fine_width = model_info["grid-width"] * factor
    n_patches = model["mean"].shape[0] * factor * factor
    anchors = [
        (cell // model_info["grid-width"]) * factor * fine_width + (cell % model_info["grid-width"]) * factor
        for cell in range(model["mean"].shape[0])
    ]
    x = torch.from_numpy(values[keep].reshape(-1, n_patches, len(channels))).double()  # [N, P, k]
    n = x.shape[0]
    mean = x.mean(0)
    centered = x - mean
    eye = torch.eye(len(channels), dtype=torch.float64)
    result = {"n": n}
    if args.pool != "0":
        # Pooled over positions: each patch's window of positions (within --pool cells in both
        # directions, cut at the grid's edges, or all), every sample centred on its own position's mean.
        from safetensors import safe_open

        with safe_open(f"{args.run_dir}/fit/model-{args.subset}.safetensors", "np") as f:
            info = _json.loads(f.metadata()["padim"])
        height, width = info["grid-height"], info["grid-width"]
        radius = max(height, width) if args.pool == "all" else int(args.pool)
        windows = [
            [yy * width + xx for yy in range(height) for xx in range(width) if abs(yy - p // width) <= radius and abs(xx - p % width) <= radius]
            for p in range(n_patches)
        ]
        distinct = {tuple(w): None for w in windows}  # patches with one window share its estimate
        if args.covariance == "oas":
            from sklearn.covariance import OAS

            for w in distinct:
                distinct[w] = OAS(assume_centered=True).fit(centered[:, list(w), :].reshape(-1, len(channels)).numpy())
            fits = [distinct[tuple(w)] for w in windows]
            cov = torch.from_numpy(np.stack([f.covariance_ for f in fits])) + args.epsilon * eye
            shrinkage = torch.tensor([f.shrinkage_ for f in fits], dtype=torch.float64)
            result["shrinkage"] = float((torch.from_numpy(model["shrinkage"]).double() - shrinkage).abs().max().item())
            result["shrinkage-range"] = [float(shrinkage.min()), float(shrinkage.max())]
        else:
            for w in distinct:
                window = centered[:, list(w), :]
                distinct[w] = torch.einsum("nqi,nqj->ij", window, window) / (len(w) * (n - 1))
            cov = torch.stack([distinct[tuple(w)] for w in windows]) + args.epsilon * eye
        result["cells-range"] = [min(map(len, windows)), max(map(len, windows))]
    elif args.covariance == "oas":
        # scikit-learn's OAS per patch, on the raw training embeddings of that patch.
        from sklearn.covariance import OAS

        fits = [OAS(assume_centered=False).fit(x[:, p, :].numpy()) for p in range(n_patches)]
        cov = torch.from_numpy(np.stack([f.covariance_ for f in fits])) + args.epsilon * eye
        shrinkage = torch.tensor([f.shrinkage_ for f in fits], dtype=torch.float64)
        ours_shrinkage = torch.from_numpy(model["shrinkage"]).double()
        result["shrinkage"] = float((ours_shrinkage - shrinkage).abs().max().item())
        result["shrinkage-range"] = [float(shrinkage.min()), float(shrinkage.max())]
    else:
        cov = torch.einsum("npi,npj->pij", centered, centered) / (n - 1) + args.epsilon * eye
    precision = torch.linalg.inv(cov)
    if factor > 1:
        cells = torch.tensor([(p // fine_width // factor) * model_info["grid-width"] + (p % fine_width) // factor for p in range(n_patches)])
        anchor_of = torch.tensor(anchors)[cells]
        result["cell-spread"] = float(max((mean - mean[anchor_of]).abs().max(), (cov - cov[anchor_of]).abs().max()))
        mean, precision = mean[anchors], precision[anchors]
    ours_mean = torch.from_numpy(model["mean"]).double()
    ours_precision = torch.from_numpy(model["precision"]).double()
    rel = lambda a, b: float(((a - b).abs().max() / b.abs().max()).item())
    result.update({"mean": rel(ours_mean, mean), "precision": rel(ours_precision, precision), "cells": len(anchors)})
    print(_json.dumps(result))


def cmd_score(args):
    """The recipe's scoring in plain PyTorch (f64) with padim's model on the same embeddings: Mahalanobis
    maps (for a nearest-patch model, distances to the training images' patches, computed from the
    embeddings of the training images named by --normal and --train-split), bilinear resize to the input size, Gaussian smoothing (sigma, odd kernel, replicate padding),
    mean/max/min and the mean of the top fraction. Prints the largest relative differences against
    padim's maps and scores."""
    import glob
    import json as _json

    import numpy as np
    import pyarrow.parquet as pq
    from safetensors.numpy import load_file as load_numpy
    from safetensors import safe_open

    path = f"{args.run_dir}/fit/model-{args.subset}.safetensors"
    model = load_numpy(path)
    with safe_open(path, "np") as f:
        info = _json.loads(f.metadata()["padim"])
    channels = model["channels"].tolist()
    columns = [f"c{c:04d}" for c in channels]
    table = pq.read_table(sorted(glob.glob(f"{args.run_dir}/extract/embeddings-*.parquet")), columns=["image"] + columns)
    # A model on a coarser grid (grid-factor f): its cell's Gaussian at every patch of the cell, as
    # nearest-neighbour upsampling of the model onto the embedding grid.
    factor = info.get("grid-factor", 1)
    height, width = info["grid-height"] * factor, info["grid-width"] * factor
    n_patches = height * width
    cells = [(p // width // factor) * info["grid-width"] + (p % width) // factor for p in range(n_patches)]
    ids = table.column("image").to_numpy()[::n_patches]
    x = torch.from_numpy(np.stack([table.column(c).to_numpy() for c in columns], -1).reshape(len(ids), n_patches, -1)).double()
    if info.get("covariance") == "nearest":
        # The nearest training patch, from the raw embeddings (not the model's bank): each image's
        # grid averaged over 3x3 neighbourhoods (cells inside the grid), then per position the
        # Euclidean distance to the nearest training image's averaged embedding there.
        images = pq.read_table(glob.glob(f"{args.run_dir}/extract/images-*.parquet")).to_pydict()
        train = {
            i
            for i, label, status, split in zip(images["image"], images["label"], images["status"], images.get("split", [None] * len(images["image"])))
            if label in args.normal and status == "ok" and (args.train_split is None or split == args.train_split)
        }
        h, w = info["grid-height"], info["grid-width"]
        grid = x.reshape(len(ids), h, w, -1).permute(0, 3, 1, 2)
        pooled = F.avg_pool2d(grid, 3, stride=1, padding=1, count_include_pad=False).permute(0, 2, 3, 1).reshape(len(ids), n_patches, -1)
        bank = pooled[torch.tensor([i in train for i in ids.tolist()])]
        dist = torch.cdist(pooled.transpose(0, 1), bank.transpose(0, 1)).min(-1).values.transpose(0, 1)
    else:
        d = x - torch.from_numpy(model["mean"]).double()[cells]
        precision = torch.from_numpy(model["precision"]).double()[cells]
        dist = torch.einsum("npi,pij,npj->np", d, precision, d).clamp(min=0).sqrt()
    maps = dist.reshape(len(ids), 1, height, width)
    resized = F.interpolate(maps, size=(info["input-height"], info["input-width"]), mode="bilinear", align_corners=False)
    half = args.kernel_size // 2
    taps = torch.arange(args.kernel_size, dtype=torch.float64) - half
    kernel = torch.exp(-(taps**2) / (2 * args.sigma**2))
    kernel = kernel / kernel.sum()
    padded = F.pad(resized, (half, half, half, half), mode="replicate")
    smooth = F.conv2d(F.conv2d(padded, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))
    scores = pq.read_table(glob.glob(f"{args.run_dir}/score/scores-*.parquet")).to_pydict()
    ours = {
        (i, m): (mean, mx, mn, top)
        for i, m, mean, mx, mn, top in zip(scores["image"], scores["model"], scores["mean"], scores["max"], scores["min"], scores["top"])
    }
    raw = pq.read_table(glob.glob(f"{args.run_dir}/score/maps-*.parquet")).to_pydict()
    our_maps = {(i, m): v for i, m, v in zip(raw["image"], raw["model"], raw["map"])}
    worst = {"map": 0.0, "mean": 0.0, "max": 0.0, "min": 0.0, "top": 0.0}
    # Relative to each map and score, or for a nearest-patch model (whose training images' maps are
    # zero) to the largest over all images.
    nearest = info.get("covariance") == "nearest"
    for index, image in enumerate(ids.tolist()):
        ref_map = dist[index]
        our_map = torch.tensor(our_maps[(image, args.subset)], dtype=torch.float64)
        scale = dist.abs().max() if nearest else ref_map.abs().max()
        worst["map"] = max(worst["map"], float(((our_map - ref_map).abs().max() / scale)))
        mean, mx, mn, top = ours[(image, args.subset)]
        s = smooth[index, 0]
        k = max(1, math.ceil(args.top_fraction * s.numel()))
        ref_top = s.flatten().topk(k).values.mean()
        for key, a, b in (("mean", mean, s.mean()), ("max", mx, s.max()), ("min", mn, s.min()), ("top", top, ref_top)):
            scale = float(smooth.abs().max()) if nearest else abs(float(b))
            worst[key] = max(worst[key], abs(a - float(b)) / scale)
    worst["n"] = len(ids)
    print(_json.dumps(worst))


def _timed_read(run_dir, channels, train_only, normal):
    """Reads the embeddings of `channels` (all images, or the training images) into [N, P, k] f64."""
    import glob

    import numpy as np
    import pyarrow.parquet as pq

    columns = [f"c{c:04d}" for c in channels]
    table = pq.read_table(sorted(glob.glob(f"{run_dir}/extract/embeddings-*.parquet")), columns=["image"] + columns)
    ids = table.column("image").to_numpy()
    values = np.stack([table.column(c).to_numpy() for c in columns], axis=-1)
    if train_only:
        images = pq.read_table(glob.glob(f"{run_dir}/extract/images-*.parquet")).to_pydict()
        train = [i for i, label, status in zip(images["image"], images["label"], images["status"]) if label in normal and status == "ok"]
        keep = np.isin(ids, train)
        ids, values = ids[keep], values[keep]
    return ids, values


def cmd_bench_fit(args):
    """Seconds of the recipe's fit in plain PyTorch (f64, all training embeddings in memory) for the
    channel subsets of the given models: read, mean, covariance, inverse."""
    import json as _json

    from safetensors.numpy import load_file as load_numpy

    torch.set_num_threads(args.threads)
    subsets = [load_numpy(path)["channels"].tolist() for path in args.models]
    union = sorted({c for s in subsets for c in s})
    start = time.perf_counter()
    ids, values = _timed_read(args.run_dir, union, True, args.normal)
    n_patches = args.patches
    x = torch.from_numpy(values).double().reshape(-1, n_patches, len(union))
    for subset in subsets:
        xs = x[..., [union.index(c) for c in subset]]
        mean = xs.mean(0)
        centered = xs - mean
        cov = torch.einsum("npi,npj->pij", centered, centered) / (xs.shape[0] - 1)
        cov += args.epsilon * torch.eye(len(subset), dtype=torch.float64)
        torch.linalg.inv(cov)
    print(_json.dumps({"seconds": time.perf_counter() - start, "images": x.shape[0]}))


def cmd_bench_score(args):
    """Seconds of the recipe's scoring in plain PyTorch (f64) of every image with the given models:
    read, Mahalanobis maps, bilinear resize, Gaussian smoothing, mean/max/min."""
    import json as _json

    from safetensors import safe_open
    from safetensors.numpy import load_file as load_numpy

    torch.set_num_threads(args.threads)
    models = [load_numpy(path) for path in args.models]
    with safe_open(args.models[0], "np") as f:
        info = _json.loads(f.metadata()["padim"])
    union = sorted({c for m in models for c in m["channels"].tolist()})
    half = args.kernel_size // 2
    taps = torch.arange(args.kernel_size, dtype=torch.float64) - half
    kernel = torch.exp(-(taps**2) / (2 * args.sigma**2))
    kernel = kernel / kernel.sum()
    start = time.perf_counter()
    ids, values = _timed_read(args.run_dir, union, False, [])
    n_patches = info["grid-height"] * info["grid-width"]
    x = torch.from_numpy(values).double().reshape(-1, n_patches, len(union))
    for model in models:
        mean = torch.from_numpy(model["mean"]).double()
        precision = torch.from_numpy(model["precision"]).double()
        for i in range(0, x.shape[0], args.batch):
            d = x[i : i + args.batch][..., [union.index(c) for c in model["channels"].tolist()]] - mean
            dist = torch.einsum("npi,pij,npj->np", d, precision, d).clamp(min=0).sqrt()
            maps = dist.reshape(-1, 1, info["grid-height"], info["grid-width"])
            size = (info["input-height"], info["input-width"])
            resized = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
            padded = F.pad(resized, (half, half, half, half), mode="replicate")
            smooth = F.conv2d(F.conv2d(padded, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))
            flat = smooth.flatten(1)
            flat.mean(1), flat.amax(1), flat.amin(1)
    print(_json.dumps({"seconds": time.perf_counter() - start, "images": x.shape[0]}))


def cmd_classify(args):
    model = load_model(args.backbone, args.weights)
    x = load_images(args.images, args.backbone)
    with torch.no_grad():
        logits = model(x)
    top5 = logits.topk(5, dim=1).indices.tolist()
    print(json.dumps({path: classes for path, classes in zip(args.images, top5)}))


def cmd_bench(args):
    """Images per second of the PyTorch eager trunk + embedding on the same tensors as the Rust bench."""
    torch.set_num_threads(args.threads)
    model = load_model(args.backbone, args.weights)
    x = load_file(args.input)["input"]
    results = {}
    for layout in ("contiguous", "channels_last"):
        m = model.to(memory_format=torch.channels_last) if layout == "channels_last" else model
        xi = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
        with torch.inference_mode():
            embed(trunk(m, args.backbone, xi[: args.batch], "block-output"))  # warm-up
            start = time.perf_counter()
            n = 0
            for _ in range(args.repeats):
                for i in range(0, xi.shape[0], args.batch):
                    emb = embed(trunk(m, args.backbone, xi[i : i + args.batch], "block-output")).contiguous()
                    n += emb.shape[0]
            elapsed = time.perf_counter() - start
        results[layout] = n / elapsed
    print(json.dumps(results))


def cmd_bench_predict(args):
    """The recipe's per-image pipeline in plain PyTorch with padim's bundle (PIL decode and resize,
    trunk, embedding, channel subset, Mahalanobis in f32, bilinear resize, Gaussian smoothing, mean or
    max, normalisation, threshold): single-image latency (p50, p95, each image alone) and the
    throughput of batches of --batch. Prints JSON with the normalised scores, to check agreement."""
    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import load_file as load_numpy

    torch.set_num_threads(args.threads)
    bundle = load_numpy(args.bundle)
    with safe_open(args.bundle, "np") as f:
        info = json.loads(f.metadata()["padim-bundle"])
    model_info = info["model"]
    backbone = model_info["backbone"]
    model = load_model(backbone, args.weights)
    pre = info["preprocess"]
    t = transform(backbone, pre["resize"][0], pre["crop"][0])
    channels = torch.from_numpy(bundle["channels"])
    mean = torch.from_numpy(bundle["mean"].astype(np.float32))
    precision = torch.from_numpy(bundle["precision"].astype(np.float32))
    grid = (model_info["grid-height"], model_info["grid-width"])
    size = (model_info["input-height"], model_info["input-width"])
    sigma, k = info["score-settings"]["sigma"], info["score-settings"]["kernel-size"]
    taps = torch.arange(k, dtype=torch.float32) - k // 2
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    lo, hi = info["normalisation"]

    def scores(paths):
        from PIL import Image

        x = torch.stack([t(Image.open(p).convert("RGB")) for p in paths])
        emb = embed(trunk(model, backbone, x, model_info["tap"]))[:, channels]
        d = emb.flatten(2).transpose(1, 2) - mean  # n, patches, k
        dist = torch.einsum("npi,pij,npj->np", d, precision, d).clamp(min=0).sqrt()
        maps = F.interpolate(dist.reshape(len(paths), 1, *grid), size=size, mode="bilinear", align_corners=False)
        padded = F.pad(maps, (k // 2,) * 4, mode="replicate")
        smooth = F.conv2d(F.conv2d(padded, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))
        flat = smooth.flatten(1)
        if info["score"] == "mean":
            raw = flat.mean(1)
        elif info["score"] == "max":
            raw = flat.max(1).values
        else:
            top = max(1, math.ceil(info["score-settings"]["top-fraction"] * flat.shape[1]))
            raw = flat.topk(top, dim=1).values.mean(1)
        return ((raw - lo) / (hi - lo)).tolist()

    with torch.inference_mode():
        scores(args.images[:1])  # warm-up
        latencies, out = [], {}
        for path in args.images:
            start = time.perf_counter()
            out[path] = scores([path])[0]
            latencies.append(time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(0, len(args.images), args.batch):
            scores(args.images[i : i + args.batch])
        throughput = len(args.images) / (time.perf_counter() - start)
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    print(json.dumps({"p50": pick(0.5), "p95": pick(0.95), "throughput": throughput, "scores": out}))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--backbone", required=True)
    common.add_argument("--weights", required=True)
    common.add_argument("--tap", default="block-output", choices=["block-output", "last-bn"])

    p = sub.add_parser("features", parents=[common])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--height", type=int, default=224)
    p.add_argument("--width", type=int, default=224)
    p.add_argument("--out", required=True)
    p.set_defaults(run=cmd_features)

    p = sub.add_parser("pipeline", parents=[common])
    p.add_argument("--out", required=True)
    p.add_argument("images", nargs="+")
    p.set_defaults(run=cmd_pipeline)

    p = sub.add_parser("png")
    p.add_argument("--out-dir", required=True)
    p.add_argument("images", nargs="+")
    p.set_defaults(run=cmd_png)

    p = sub.add_parser("fit")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--subset", required=True)
    p.add_argument("--epsilon", type=float, default=0.01)
    p.add_argument("--normal", nargs="+", required=True)
    p.add_argument("--covariance", choices=["sample", "oas"], default="sample")
    p.add_argument("--pool", default="0", help="covariances pooled over positions: a radius in cells, or all")
    p.set_defaults(run=cmd_fit)

    p = sub.add_parser("score")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--subset", required=True)
    p.add_argument("--sigma", type=float, default=4.0)
    p.add_argument("--kernel-size", type=int, default=33)
    p.add_argument("--top-fraction", type=float, default=0.01)
    p.add_argument("--normal", nargs="+", default=[], help="training labels (nearest-patch models)")
    p.add_argument("--train-split", default=None, help="only this split trains (nearest-patch models)")
    p.set_defaults(run=cmd_score)

    p = sub.add_parser("bench-fit")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--patches", type=int, required=True)
    p.add_argument("--epsilon", type=float, default=0.01)
    p.add_argument("--normal", nargs="+", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("models", nargs="+")
    p.set_defaults(run=cmd_bench_fit)

    p = sub.add_parser("bench-score")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--sigma", type=float, default=4.0)
    p.add_argument("--kernel-size", type=int, default=33)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("models", nargs="+")
    p.set_defaults(run=cmd_bench_score)

    p = sub.add_parser("bench-predict")
    p.add_argument("--bundle", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("images", nargs="+")
    p.set_defaults(run=cmd_bench_predict)

    p = sub.add_parser("classify", parents=[common])
    p.add_argument("images", nargs="+")
    p.set_defaults(run=cmd_classify)

    p = sub.add_parser("bench", parents=[common])
    p.add_argument("--input", required=True)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.set_defaults(run=cmd_bench)

    args = parser.parse_args()
    torch.set_grad_enabled(False)
    args.run(args)


if __name__ == "__main__":
    main()
