#!/usr/bin/env python3
"""Reads every Parquet file under a root with pyarrow (an implementation independent of the
node's) and prints one JSON document describing them, for the black-box tests of the cold tier.

    parquet_check.py local <dir>
    parquet_check.py s3 <endpoint> <bucket> <prefix>

S3 uses boto3 with path-style addressing; credentials come from the usual AWS_* variables
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION) and default to dummy values,
which is what a moto server accepts.

Output, files sorted by path:

    {"files": [{"path": "<path relative to the root, '/'-separated>",
                "size": <bytes>,
                "rows": N,
                "columns": ["id", ...],
                "types": {"id": "int64", "_seq": "uint64", ...},
                "codecs": {"id": "ZSTD", "_seq": "UNCOMPRESSED", ...},  # per column: its chunks' codec, else "A,B"
                "data": [{"id": 1, ...}, ...]}]}

Values: ints, floats (NaN/inf as strings), strings, bools, null; timestamps as RFC 3339 UTC
strings with microseconds ("2026-11-27T10:00:00.000123Z", a timestamp without a zone is
taken as UTC); dates as "YYYY-MM-DD"; decimals as exact strings; binary as base64.
"""

import base64
import datetime
import decimal
import io
import json
import math
import os
import sys

import pyarrow
import pyarrow.parquet as pq

# One thread each: pyarrow's pools can abort the interpreter at exit ("terminate called
# without an active exception") when many of these run in parallel.
pyarrow.set_cpu_count(1)
pyarrow.set_io_thread_count(1)


def jsonable(v):
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    if isinstance(v, datetime.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return v.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(v, datetime.date):
        return v.isoformat()
    if isinstance(v, datetime.time):
        return v.isoformat()
    if isinstance(v, datetime.timedelta):
        return v // datetime.timedelta(microseconds=1)
    if isinstance(v, decimal.Decimal):
        return format(v, "f")  # never exponent notation: Decimal("0E-10") -> "0.0000000000"
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode("ascii")
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return str(v)


def describe(path, source, size):
    f = pq.ParquetFile(source)
    meta = f.metadata
    codecs = {}
    for rg in range(meta.num_row_groups):
        group = meta.row_group(rg)
        for c in range(group.num_columns):
            chunk = group.column(c)
            codecs.setdefault(chunk.path_in_schema, set()).add(str(chunk.compression).upper())
    table = f.read()
    schema = table.schema
    return {
        "path": path,
        "size": size,
        "rows": meta.num_rows,
        "columns": list(schema.names),
        "types": {field.name: str(field.type) for field in schema},
        "codecs": {column: ",".join(sorted(c)) for column, c in codecs.items()},
        "data": [jsonable(row) for row in table.to_pylist()],
    }


def local(root):
    if not os.path.isdir(root):
        # A location nothing was written to yet: no files, not an error.
        return []
    out = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            if not name.endswith(".parquet"):
                continue
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            with open(full, "rb") as fh:
                data = fh.read()
            out.append(describe(rel, io.BytesIO(data), len(data)))
    return out


def s3(endpoint, bucket, prefix):
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )
    prefix = prefix.lstrip("/")
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if not key.endswith(".parquet"):
                continue
            data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            rel = key[len(prefix):].lstrip("/")
            out.append(describe(rel, io.BytesIO(data), len(data)))
    return out


def main(argv):
    if len(argv) == 2 and argv[0] == "local":
        files = local(argv[1])
    elif len(argv) == 4 and argv[0] == "s3":
        files = s3(argv[1], argv[2], argv[3])
    else:
        sys.stderr.write(__doc__)
        return 2
    files.sort(key=lambda f: f["path"])
    json.dump({"files": files}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown (where pyarrow's thread pools have aborted): the answer is out.
    os._exit(code)
