"""bert_jax.host_memory: with `reuse`, a jitted step's large temporaries stop page-faulting on every call.

The policy is process-wide and must be set before JAX starts, so each case runs in a fresh interpreter
(this test process has its own allocator state and a started JAX)."""

import os
import subprocess
import sys
import textwrap

import pytest

from bert_jax import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")

# A [6144, 6144] float32 temporary (144 MiB, above glibc's largest mmap threshold) per call.
FAULTS_PER_CALL = textwrap.dedent("""
    import resource, sys
    from bert_jax import host_memory
    applied = host_memory.configure(sys.argv[1])
    import jax, jax.numpy as jnp

    @jax.jit
    def step(x):
        return jnp.sum(jnp.tanh(x @ x.T) @ x)

    x = jnp.full((6144, 128), 1e-3)
    for _ in range(2):
        step(x).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        step(x).block_until_ready()
    print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3, host_memory.describe())
""")


def _faults(mode):
    proc = subprocess.run([sys.executable, "-c", FAULTS_PER_CALL, mode], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    applied, faults, described = proc.stdout.strip().splitlines()[-1].split(" ", 2)
    return applied == "True", float(faults), described


@pytest.mark.skipif(host_memory._glibc() is None, reason="the reuse policy is glibc's mallopt")
def test_reuse_stops_the_per_call_page_faults():
    applied_default, faults_default, described_default = _faults("default")
    applied_reuse, faults_reuse, described_reuse = _faults("reuse")
    assert (applied_default, applied_reuse) == (False, True)
    assert described_default == "malloc defaults" and described_reuse.startswith("reuse")
    if faults_default < 50:
        pytest.skip(f"this allocator already reuses the block ({faults_default:.0f} faults per call): nothing to show")
    # Default glibc maps the 144 MiB block afresh on each call (36,865 4-KiB faults per call on an idle
    # machine); reused, none on an idle machine and ~130 (other allocations) under a parallel test run.
    assert faults_reuse * 20 < faults_default, (faults_reuse, faults_default)
    # auto = reuse when JAX runs on the CPU (JAX_PLATFORMS=cpu here).
    applied_auto, faults_auto, _ = _faults("auto")
    assert applied_auto and faults_auto * 20 < faults_default, (faults_auto, faults_default)


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="host_memory='sometimes'"):
        host_memory.configure("sometimes")


def test_auto_follows_the_platform(tmp_path):
    """`runs_on_cpu`: JAX_PLATFORMS decides when set; unset, an installed accelerator plugin (here a stand-in
    `libtpu` package) means the host mostly feeds a device, and `auto` leaves malloc alone."""
    (tmp_path / "libtpu").mkdir()
    (tmp_path / "libtpu" / "__init__.py").write_text("")
    probe = "from bert_jax import host_memory; print(host_memory.runs_on_cpu(), host_memory.configure('auto'))"
    cases = [({"JAX_PLATFORMS": "cpu"}, "True True"), ({"JAX_PLATFORMS": "tpu,cpu"}, "False False"),
             ({"JAX_PLATFORMS": "", "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}, "False False")]
    for overrides, expected in cases:
        proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=dict(ENV, **overrides), capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        if host_memory._glibc() is None and expected == "True True":
            expected = "True False"
        assert proc.stdout.strip().splitlines()[-1] == expected, (overrides, proc.stdout, proc.stderr[-1000:])


def test_main_applies_it_before_jax_starts(tmp_path):
    """The entry point configures the allocator from `config.host_memory` before any JAX computation (the run
    itself stops at config validation, which is all this needs)."""
    proc = subprocess.run([sys.executable, "-m", "bert_jax.main", f"--workdir={tmp_path}",
                           "--config.optim.total_steps=2"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)
    log = proc.stdout + proc.stderr
    if host_memory._glibc() is not None:
        assert "host_memory=auto: one malloc arena" in log, log[-3000:]
    assert "applied after JAX started" not in log, log[-3000:]
    assert "warmup_steps (100) must be <= optim.total_steps (2)" in log, log[-3000:]
