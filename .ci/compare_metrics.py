"""Checks that two runs' metrics.jsonl hold the same records, bit for bit, apart from wall-clock fields
(`time` and rates: seq/s, tokens/s, TFLOP/s, MFU): the reproducibility contract of a fixed seed.

    python3 .ci/compare_metrics.py FIRST/metrics.jsonl SECOND/metrics.jsonl
"""

import json
import sys

WALL_CLOCK = ("time", "seq_per_s", "tokens_per_s", "model_tflops_per_s", "mfu")


def records(path):
    with open(path, encoding="utf-8") as f:
        return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK} for line in f if line.strip()]


first, second = records(sys.argv[1]), records(sys.argv[2])
if not first:
    sys.exit(f"{sys.argv[1]}: no records")
if len(first) != len(second):
    sys.exit(f"{len(first)} records in {sys.argv[1]}, {len(second)} in {sys.argv[2]}")
for a, b in zip(first, second):
    if a != b:  # JSON floats round-trip exactly: equal text means equal float32 values
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        sys.exit(f"step {a.get('step')} ({a.get('split')}) differs in {keys}: "
                 + "; ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys[:5]))
values = sum(len(r) for r in first)
print(f"metrics identical: {len(first)} records, {values} values (wall-clock fields left out)")
