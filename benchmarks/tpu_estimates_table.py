"""Markdown table of the compiler estimates in benchmarks/results/tpu-estimates/*.json (written by
benchmarks/tpu_estimates.sh, i.e. `bert_jax.aot --json_out`). Every time / rate / MFU here is XLA's
cost-model estimate for the compiled step (`cost_analysis()['optimal_seconds']`), not a measurement.

    .venv/bin/python benchmarks/tpu_estimates_table.py [DIR]
"""

import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))


def rows(directory):
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        name = os.path.basename(path)[:-5]
        with open(path) as f:
            d = json.load(f)
        parts = name.split("-")  # "v5p-8-base-128-xla[-drop0.1][-scan-dots]"
        topo, size, seq, impl, rest = "-".join(parts[:2]), parts[2], parts[3], parts[4], parts[5:]
        drop = next((p[len("drop"):] for p in rest if p.startswith("drop")), "0")
        rest = [p for p in rest if not p.startswith("drop")]
        yield {**d, "name": name, "topology": topo, "size": size, "seq": int(seq), "impl": impl,
               "dropout": drop, "variant": "scan + remat (dots, no batch dims)" if rest else "unrolled, no remat"}


def kernel(r):
    if r["impl"] == "xla":
        return "xla"
    if r["impl"] == "flash" or r["dropout"] not in ("0", "0.0"):
        # pallas_tpu hands calls with attention dropout to bert_jax's own flash kernel (modeling/flash.py).
        return "own Pallas flash" + (", in-kernel dropout" if r["dropout"] not in ("0", "0.0") else "")
    return "Pallas flash (fused)"  # pallas_tpu: the library kernel (jax.experimental.pallas.ops.tpu)


def table(directory):
    out = ["| topology | model | seq | attention | attention dropout | layers | per-device memory (GiB) | est. step (ms) "
           "| est. tokens/s (slice) | est. tokens/s per chip | MFU implied | XLA / model FLOPs |",
           "|---|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    order = {"v5p-8": 0, "v4-8": 1}
    for r in sorted(rows(directory), key=lambda r: (order.get(r["topology"], 9), r["size"], r["seq"],
                                                     r["variant"].startswith("scan"), r["dropout"], r["impl"])):
        chips = r["num_devices"]
        if r["xla_flops_per_device"] < 0.5 * r["model_flops_per_device"]:
            # XLA's cost analysis counts the scanned layer loop's body once: its time is not a step time.
            timing = "n/a (scan) | n/a | n/a | n/a"
        elif "estimated_step_seconds" in r:  # libtpu's cost model gives no optimal_seconds for some chips (v4)
            tps = r["estimated_tokens_per_second"]
            timing = (f"{r['estimated_step_seconds'] * 1e3:.1f} | {tps:,.0f} | {tps / chips:,.0f} | "
                      f"{100 * r.get('estimated_mfu', 0):.1f}%")
        else:
            timing = "n/a | n/a | n/a | n/a"
        out.append(f"| {r['topology']} | BERT-{r['size']} | {r['seq']} | "
                   f"{kernel(r)} | {r['dropout']} | {r['variant']} | "
                   f"{r['total_bytes_per_device'] / 2**30:.2f} | {timing} | "
                   f"{r['xla_flops_per_device'] / r['model_flops_per_device']:.3f} |")
    return "\n".join(out)


if __name__ == "__main__":
    print(table(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "results", "tpu-estimates")))
