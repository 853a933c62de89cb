"""Host memory policy for XLA:CPU runs: keep freed blocks mapped so each step does not page-fault.

XLA:CPU allocates an executable's temporaries as one block per call (1.5 GiB for the BERT-base
8x128 training step) from its worker threads. glibc serves a block that large, requested from a worker
thread's arena, with a fresh `mmap` and returns it with `munmap` when the call ends, so on every step
the kernel zero-fills and faults in the whole block again: 404k minor page faults and 0.6 s of system
time per step on a 2-core Xeon, about 7% of the step's wall time. With one malloc arena, no `mmap`
for large blocks and no trimming, the freed block stays in the heap and the next step reuses it (0
faults after the first step).

The settings (`mallopt`) are process-wide and only reach threads that have not yet allocated, so
`configure` must run before the first JAX computation creates XLA's thread pool; the entry points
(`bert_jax.main`, the benchmark) call it first thing. Trade-off: the process keeps its peak heap
(memory freed by the program is not returned to the OS) and all threads share one arena. Both suit a
training or benchmark process; neither is wanted in a host that mostly feeds an accelerator, so
`auto` applies the policy only where XLA will run on the CPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import logging
import os
import platform

logger = logging.getLogger(__name__)

MODES = ("auto", "reuse", "default")

# glibc <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER_TRIM = -1  # mallopt takes an int; glibc stores it as size_t, so -1 is SIZE_MAX: never trim

# Modules whose presence means JAX will pick an accelerator by default.
_ACCELERATOR_PLUGINS = ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                        "jax_rocm7_plugin")

_applied = False


def runs_on_cpu() -> bool:
    """Whether JAX will compute on the CPU: `JAX_PLATFORMS` / `jax_platforms` names only cpu, or, when
    unset, no accelerator plugin (libtpu, the CUDA or ROCm plugins) is installed."""
    import jax
    platforms = jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return {p.strip() for p in platforms.split(",") if p.strip()} == {"cpu"}
    return not any(importlib.util.find_spec(name) is not None for name in _ACCELERATOR_PLUGINS)


def _glibc():
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # only glibc has mallopt with these parameter numbers
        return libc
    except (OSError, AttributeError):
        return None


def _backends_started() -> bool:
    """Whether JAX has started a backend (and with it XLA's threads). JAX has no public query for this:
    `jax.extend.backend.backends()` would start them. The private one is read defensively, so a JAX without
    it only loses the late-call warning."""
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return False


def configure(mode: str = "auto") -> bool:
    """Applies the host memory policy `mode` and returns whether the reuse settings are in force.

    `reuse`: one malloc arena, large blocks from the heap instead of `mmap`, no trimming (glibc only;
    elsewhere a logged no-op). `default`: leave the allocator as it is. `auto`: `reuse` when
    `runs_on_cpu()`. Call it before the first JAX computation; called later it warns, because XLA's
    threads keep the arenas they already have. Idempotent."""
    global _applied
    if mode not in MODES:
        raise ValueError(f"host_memory={mode!r}: choose one of {list(MODES)}")
    if mode == "default" or (mode == "auto" and not runs_on_cpu()):
        return _applied
    if _applied:
        return True
    libc = _glibc()
    if libc is None:
        logger.info("host_memory=%s: not a glibc Linux process; allocator left as it is", mode)
        return False
    if _backends_started():
        logger.warning("host_memory=%s applied after JAX started its backend: threads that already allocated keep "
                       "their own arenas, so XLA's per-step temporaries may still be mapped afresh each step; call "
                       "bert_jax.host_memory.configure() before the first JAX computation", mode)
    for option, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM)):
        if libc.mallopt(option, value) != 1:
            logger.warning("host_memory=%s: mallopt(%d, %d) was refused", mode, option, value)
            return False
    _applied = True
    logger.info("host_memory=%s: one malloc arena, no mmap, no trimming (XLA:CPU's per-step temporaries stay "
                "mapped between steps)", mode)
    return True


def describe() -> str:
    """What the process runs with, for reports: the reuse settings or glibc's defaults."""
    return "reuse (one arena, no mmap, no trim)" if _applied else "malloc defaults"
