"""Fused attention kernels on sharded meshes (8 fake CPU devices, Pallas kernels interpreted) and the
embedding lookup without involuntary rematerialisation.

Pallas (Mosaic / Triton) kernels cannot be partitioned by XLA: `attention.shard_map_kernel` runs them
under `jax.shard_map` over the mesh axes that shard batch and heads. Here BertForPreTraining's loss and
gradients with `pallas_gpu` (interpreted) equal `xla`'s on data x fsdp, data x fsdp x tensor and
fsdp x tensor meshes, and so do `pallas_tpu`'s (TPU interpret mode, which simulates the 8 devices of
the shard_map; it needs more XLA:CPU pool threads than this 2-core machine's default, see
tests/sharded_worker.py; the TPU compiler compiles it sharded in tests/test_tpu_compile.py).
On meshes with data > 1 and fsdp > 1
the compiler once warned "Involuntary full rematerialization" (a full replication each step) on the
word-embedding gather and the embedding LayerNorm backward; the worker's stderr must not say so.
The compile-for-TPU side of the same kernels is tests/test_tpu_compile.py.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "sharded_worker.py")
MESHES = ["2x4x1", "2x2x2", "1x2x4"]


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sharded"))
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, WORKER, out, "xla,pallas_gpu"], env=env, capture_output=True, text=True,
                          timeout=1200)
    if proc.returncode:
        pytest.fail(f"sharded worker failed:\n{proc.stderr[-6000:]}")
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f), proc.stderr


@pytest.mark.parametrize("mesh", MESHES)
def test_pallas_kernel_equals_xla_on_sharded_meshes(worker, mesh):
    results, _ = worker
    ref, out = results[mesh]["xla"], results[mesh]["pallas_gpu"]
    assert abs(out["loss"] - ref["loss"]) < 1e-5 * max(1.0, abs(ref["loss"]))
    assert out["max_grad_diff_vs_xla"] < 1e-5
    assert out["shard_map"], f"pallas_gpu on {mesh} did not run under shard_map"
    assert not ref["shard_map"]


@pytest.fixture(scope="module")
def tpu_interpret_worker(tmp_path_factory):
    """Runs the worker with `xla` and `pallas_tpu` on one mesh (a process per mesh, ~35 s each on 2 cores)."""
    cache = {}

    def run(mesh):
        if mesh not in cache:
            out = str(tmp_path_factory.mktemp("sharded_tpu_interpret"))
            proc = subprocess.run([sys.executable, WORKER, out, "xla,pallas_tpu", "0", mesh],
                                  env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=900)
            if proc.returncode:
                pytest.fail(f"sharded pallas_tpu worker failed:\n{proc.stderr[-6000:]}")
            with open(os.path.join(out, "results.json")) as f:
                cache[mesh] = json.load(f)[mesh]
        return cache[mesh]

    return run


# 2x2x2 shards batch over data x fsdp and heads over tensor at once: the default run. The other two
# meshes take another ~35 s each of TPU interpret mode on 2 cores, so they are marked slow.
@pytest.mark.parametrize("mesh", ["2x2x2"] + [pytest.param(m, marks=pytest.mark.slow) for m in ("2x4x1", "1x2x4")])
def test_pallas_tpu_equals_xla_on_sharded_meshes(tpu_interpret_worker, mesh):
    """The Pallas TPU flash kernel, run (TPU interpret mode) under shard_map on 8 fake devices: loss and
    gradients of BertForPreTraining equal the unfused `xla` step's in fp32."""
    results = tpu_interpret_worker(mesh)
    ref, out = results["xla"], results["pallas_tpu"]
    assert out["shard_map"], f"pallas_tpu on {mesh} did not run under shard_map"
    assert abs(out["loss"] - ref["loss"]) < 1e-5 * max(1.0, abs(ref["loss"]))
    assert out["max_grad_diff_vs_xla"] < 1e-5


def test_no_involuntary_rematerialization(worker):
    _, stderr = worker
    lines = [line for line in stderr.splitlines() if "Involuntary full rematerialization" in line]
    assert not lines, "XLA replicated a tensor to reshard it:\n" + "\n".join(lines[:3])


@pytest.fixture(scope="module")
def dropout_worker(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sharded_dropout"))
    proc = subprocess.run([sys.executable, WORKER, out, "xla_counter,flash", "0.1"], env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        pytest.fail(f"sharded dropout worker failed:\n{proc.stderr[-6000:]}")
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("mesh", MESHES)
def test_flash_with_dropout_equals_the_unsharded_mask(dropout_worker, mesh):
    """Training with attention dropout 0.1 through our flash kernel under shard_map: every shard draws its
    rows' and heads' part of the whole call's counter-based mask, so loss and gradients equal the unfused
    `xla_counter` step's (a shard repeating shard 0's mask would differ by O(1e-2))."""
    ref, out = dropout_worker[mesh]["xla_counter"], dropout_worker[mesh]["flash"]
    assert out["shard_map"] and not ref["shard_map"]
    assert abs(out["loss"] - ref["loss"]) < 1e-5 * max(1.0, abs(ref["loss"]))
    assert out["max_grad_diff_vs_xla"] < 1e-5
