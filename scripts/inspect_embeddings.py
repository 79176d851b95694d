#!/usr/bin/env python3
"""Opens padim's embeddings and image tables with pyarrow and polars (as a user would) and prints a
JSON summary: row counts, metadata, and the per-image sum of one projected channel."""
import json
import sys

import polars as pl
import pyarrow.parquet as pq


def main(embeddings, images, channel):
    column = f"c{channel:04d}"
    meta = json.loads(pq.read_metadata(embeddings).metadata[b"padim.embeddings"])
    # Column projection: only `image` and one channel are read.
    table = pq.read_table(embeddings, columns=["image", column])
    frame = pl.read_parquet(embeddings, columns=["image", "y", "x", column])
    sums = frame.group_by("image").agg(pl.col(column).cast(pl.Float64).sum()).sort("image")
    image_table = pl.read_parquet(images)
    print(
        json.dumps(
            {
                "rows": table.num_rows,
                "columns": len(pq.read_schema(embeddings).names),
                "backbone": meta["backbone"],
                "grid": [meta["grid-height"], meta["grid-width"]],
                "max_y": int(frame["y"].max()),
                "max_x": int(frame["x"].max()),
                "sums": dict(zip(map(str, sums["image"].to_list()), sums[column].to_list())),
                "images": image_table.height,
                "image_columns": image_table.columns,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
