#!/usr/bin/env python3
"""Writes the magnetic tile data set's groups for `split.groups` (configs/magnetic-tile-groups.csv).

The data set photographs each physical tile under several lights: the views are named
`expL_num_N.jpg` with L the light and N a running number, and the views of one tile have numbers
within about 100 of each other (a gap between tiles is larger). Within each class folder, images
sorted by N start a new group where N jumps by more than --gap; a group that holds two tiles whose
numbers interleave stays one group, which only makes the split more careful. Only the standard
library; run from the project root:

  python3 scripts/tile_groups.py ../shared/data/magnetic-tile > configs/magnetic-tile-groups.csv
"""
import argparse
import re
import sys
from collections import Counter
from pathlib import Path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="the data set's folder (holding MT_*/Imgs/*.jpg)")
    parser.add_argument("--gap", type=int, default=100)
    args = parser.parse_args()
    classes = sorted(p for p in args.root.glob("MT_*") if p.is_dir())
    if not classes:
        sys.exit(f"{args.root}: no MT_* folders; give the magnetic tile data set's folder")
    print("path,group")
    sizes = Counter()
    for folder in classes:
        views = []
        for image in (folder / "Imgs").glob("*.jpg"):
            match = re.fullmatch(r"exp\d+_num_(\d+)\.jpg", image.name)
            if not match:
                sys.exit(f"{image}: not named expL_num_N.jpg; cannot tell its tile")
            views.append((int(match.group(1)), image.name))
        views.sort()
        group, last, size = None, None, 0
        for number, name in views:
            if last is None or number - last > args.gap:
                if group:
                    sizes[size] += 1
                group, size = f"{folder.name}/{number}", 0
            print(f"{folder.name}/Imgs/{name},{group}")
            last, size = number, size + 1
        sizes[size] += 1
    print(f"{sum(sizes.values())} groups; views per group: {dict(sorted(sizes.items()))}", file=sys.stderr)


if __name__ == "__main__":
    main()
