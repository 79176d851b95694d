#!/usr/bin/env python3
"""A small S3 client for scripts/image.sh (boto3, from the project's environment): the endpoint and
credentials come from the AWS_* environment variables.

Usage: s3_check.py create BUCKET | s3_check.py expect BUCKET KEY...  (exit 1 naming a missing key)
"""
import sys

import boto3


def main(argv):
    s3 = boto3.client("s3")
    if argv[:1] == ["create"] and len(argv) == 2:
        s3.create_bucket(Bucket=argv[1])
        return 0
    if argv[:1] == ["expect"] and len(argv) >= 3:
        bucket, keys = argv[1], argv[2:]
        found = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                 for o in page.get("Contents", [])}
        missing = [k for k in keys if k not in found]
        for key in keys:
            print(f"  s3://{bucket}/{key}: {'present' if key in found else 'MISSING'}")
        return 1 if missing else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
