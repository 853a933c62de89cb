"""GPU check of the `flash` kernel (Pallas/Triton) against the `xla` reference, and its speed.

    PYTHONPATH=. python benchmarks/flash_gpu_check.py            # BERT-base shapes, < 60 s on an H200

For batch 32, 12 heads, head dim 64, seq 128 and 512, float32 and bfloat16, with attention dropout
0.1 and a padded second half of the batch (segment ids):
  * correctness: output and dq/dk/dv of `flash` vs `xla_attention(dropout_mask="counter")` (the same
    dropout mask), max abs difference and the same relative to the reference's largest magnitude;
  * speed: median ms of forward and of forward+backward, `flash` vs the `xla` kernel (Bernoulli
    dropout, the default training path) and vs `xla_counter`.
fp32 matmuls run at the backend's default precision in both (TF32 on Hopper), so fp32 differences
of ~1e-3 relative are matmul rounding, not mask disagreements (a wrong mask gives O(1) errors).
"""

import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from bert_jax.modeling import attention, flash

B, N, D, RATE = 32, 12, 64, 0.1
LENGTHS = (128, 512)
if "--tiny" in sys.argv:  # a smoke run of the script itself (e.g. on CPU, interpret mode)
    B, N, LENGTHS = 2, 2, (128,)
START = time.time()


def bench(fn, *args, iters=10 if "--tiny" not in sys.argv else 1):
    out = fn(*args)
    jax.block_until_ready(out)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def main():
    print(f"jax {jax.__version__}, devices {jax.devices()}", flush=True)
    rng = jax.random.PRNGKey(7)
    for length in LENGTHS:
        for dtype in (jnp.float32, jnp.bfloat16):
            name = f"seq={length} {jnp.dtype(dtype).name}"
            if time.time() - START > 50:
                print(f"{name}: skipped (time budget)")
                continue
            keys = jax.random.split(jax.random.PRNGKey(length), 3)
            q, k, v = (jax.random.normal(x, (B, length, N, D), jnp.float32).astype(dtype) for x in keys)
            q_ids = jnp.ones((B, length), jnp.int32)
            kv_ids = q_ids.at[B // 2:, length * 3 // 4:].set(0)  # half the rows padded by a quarter
            mask = q_ids[:, None, :, None] == kv_ids[:, None, None, :]
            weights = jax.random.normal(jax.random.PRNGKey(1), q.shape, jnp.float32)

            kernels = {
                "flash": lambda q, k, v: attention.flash_attention(q, k, v, segment_ids=(q_ids, kv_ids), dropout_rate=RATE,
                                                            dropout_rng=rng)[0],
                "xla_counter": lambda q, k, v: attention.xla_attention(q, k, v, mask=mask, dropout_rate=RATE,
                                                                       dropout_rng=rng, dropout_mask="counter")[0],
                "xla": lambda q, k, v: attention.xla_attention(q, k, v, mask=mask, dropout_rate=RATE,
                                                               dropout_rng=rng)[0],
            }

            def fwd_bwd(fn):
                def run(q, k, v):
                    out, vjp = jax.vjp(fn, q, k, v)
                    return (out,) + vjp((weights.astype(out.dtype)))
                return jax.jit(run)

            try:
                got = fwd_bwd(kernels["flash"])(q, k, v)
                want = fwd_bwd(kernels["xla_counter"])(q, k, v)
                diffs = []
                for label, a, b in zip(("out", "dq", "dk", "dv"), got, want):
                    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
                    err = float(np.max(np.abs(a - b)))
                    diffs.append(f"{label} {err:.2e} ({err / float(np.max(np.abs(b))):.1e} rel)")
                print(f"{name}: flash vs xla_counter max abs diff: " + ", ".join(diffs), flush=True)
                times = []
                for kname, fn in kernels.items():
                    f_ms = bench(jax.jit(fn), q, k, v)
                    fb_ms = bench(fwd_bwd(fn), q, k, v)
                    times.append(f"{kname} fwd {f_ms:.2f} ms, fwd+bwd {fb_ms:.2f} ms")
                print(f"{name}: " + " | ".join(times), flush=True)
            except Exception:  # noqa: BLE001  (report and go on to the next shape)
                print(f"{name}: FAILED\n{traceback.format_exc(limit=4)[-3000:]}", flush=True)
    print(f"total {time.time() - START:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
