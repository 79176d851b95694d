#!/usr/bin/env python3
"""Writes image files of every kind padim must decode (and some it must refuse) into a folder, for
the tests. Decoded references (PIL's RGB) are saved beside them as .rgb.png."""
import os
import sys

import numpy as np
from PIL import Image


def main(out):
    os.makedirs(out, exist_ok=True)
    # A smooth image (JPEG artefacts stay small) of 300x200.
    y, x = np.mgrid[0:200, 0:300]
    rgb = np.stack([x * 255 / 299, y * 255 / 199, (x + y) * 255 / 498], -1).astype(np.uint8)
    base = Image.fromarray(rgb, "RGB")
    base.save(f"{out}/rgb.jpg", quality=95)
    base.save(f"{out}/rgb.png")
    base.convert("L").save(f"{out}/gray.jpg", quality=95)
    base.convert("L").save(f"{out}/gray.png")
    base.convert("RGBA").save(f"{out}/rgba.png")
    base.convert("CMYK").save(f"{out}/cmyk.jpg", quality=95)
    sixteen = np.asarray(base.convert("L")).astype(np.uint16) * 257
    Image.fromarray(sixteen).save(f"{out}/gray16.png")
    rgb16 = (rgb.astype(np.uint16) * 257)
    # PIL cannot write 16-bit RGB PNGs; write one with the png encoder of numpy bytes via pypng-free path.
    write_png16_rgb(f"{out}/rgb16.png", rgb16)
    for name in ["rgb.jpg", "rgb.png", "gray.jpg", "gray.png", "rgba.png", "cmyk.jpg", "gray16.png", "rgb16.png"]:
        if name == "rgb16.png":
            ref = base
        else:
            ref = Image.open(f"{out}/{name}")
            if ref.mode.startswith("I"):
                ref = Image.fromarray((np.asarray(ref).astype(np.uint32) >> 8).astype(np.uint8))
            ref = ref.convert("RGB")
        ref.save(f"{out}/{name}.rgb.png")


def write_png16_rgb(path, pixels):
    import struct
    import zlib

    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


if __name__ == "__main__":
    main(sys.argv[1])
