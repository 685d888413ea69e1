#!/usr/bin/env python3
"""Fidelity of one set of logits against a reference (e.g. int8 or bf16 teacher inference
against f32): argmax agreement, max and RMS absolute logit difference.

Each argument is either a CSV from `distill predict --logits` (columns `logit_*`) or a
teacher-logits cache file `runs/cache/teacher-logits-*.safetensors` (tensor `logits`).
Standard library only.

    scripts/compare_logits.py REFERENCE OTHER
"""
import csv
import json
import math
import struct
import sys


def read(path):
    if path.endswith(".safetensors"):
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
            data = f.read()
        t = header["logits"]
        rows, cols = t["shape"]
        start, end = t["data_offsets"]
        flat = struct.unpack(f"<{rows * cols}f", data[start:end])
        return [list(flat[r * cols:(r + 1) * cols]) for r in range(rows)]
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = [c for c in reader.fieldnames if c.startswith("logit_")]
        if not columns:
            sys.exit(f"{path}: no logit_* columns; make it with `distill predict --logits`")
        return [[float(row[c]) for c in columns] for row in reader]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    ref, other = read(sys.argv[1]), read(sys.argv[2])
    if len(ref) != len(other) or any(len(a) != len(b) for a, b in zip(ref, other)):
        sys.exit("the two files have different shapes")
    argmax = lambda row: max(range(len(row)), key=row.__getitem__)
    agree = sum(argmax(a) == argmax(b) for a, b in zip(ref, other))
    diffs = [abs(x - y) for a, b in zip(ref, other) for x, y in zip(a, b)]
    print(f"rows {len(ref)}: argmax agreement {agree / len(ref):.4%} ({len(ref) - agree} differ), "
          f"max |diff| {max(diffs):.4f}, RMS diff {math.sqrt(sum(d * d for d in diffs) / len(diffs)):.4f}")


if __name__ == "__main__":
    main()
