"""Measurement shared by the JAX and PyTorch sides: a prepared variant, step timing, memory, other
processes' CPU load, a matmul reference and what the machine is."""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
import platform
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp


@dataclasses.dataclass
class Row:
    framework: str  # "jax" | "torch"
    mode: str  # "train" | "infer"
    head: str  # "sparse" | "dense"
    step_s: float  # median
    step_s_min: float
    compile_s: Optional[float]
    seq_per_s: float
    tokens_per_s: float
    flops_per_token: float
    tflops: float
    utilization: Optional[float]  # MFU (accelerator) or fraction of the measured matmul FLOP/s (CPU)
    peak_mem_bytes: Optional[int]
    mem_source: str
    loss: Optional[float]
    step_times: List[float]
    background_cores: Optional[float] = None  # other processes' CPU use while this variant was timed
    page_faults_per_step: Optional[float] = None  # median minor page faults of this variant's timed steps


@dataclasses.dataclass
class Prepared:
    """One compiled/built variant, ready to step."""

    step: Callable[[], None]  # one synchronous step
    compile_s: Optional[float]
    loss: Callable[[], Optional[float]]  # last training loss
    memory: Callable[[], Tuple[Optional[int], str]]  # (peak bytes, how it was measured)
    close: Callable[[], None] = lambda: None
    hlo_text: Callable[[], str] = lambda: ""  # the compiled step's HLO (JAX only), for `--profile`


def _finish(prep: Prepared, times: List[float]) -> Dict[str, Any]:
    peak, source = prep.memory()
    out = dict(times=times, compile_s=prep.compile_s, peak_mem_bytes=peak, mem_source=source, loss=prep.loss())
    prep.close()
    return out


def _time_steps(step, steps: int, warmup: int, faults: Optional[List[int]] = None) -> List[float]:
    """Runs `warmup` untimed then `steps` timed calls of `step`; returns the step times in seconds and, when
    `faults` is a list, appends each timed step's minor page faults to it (`minor_page_faults`)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        before = minor_page_faults()
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        if faults is not None and before is not None:
            faults.append(minor_page_faults() - before)
    return times


def minor_page_faults() -> Optional[int]:
    """This process's minor page faults so far (getrusage), None where unavailable. Fresh memory the kernel
    maps on first touch counts here: a step that re-faults its temporaries shows it (bert_jax.host_memory)."""
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    except (ImportError, OSError):
        return None


def _rss_bytes() -> Optional[int]:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.lru_cache(maxsize=None)
def _mallinfo2():
    try:
        libc = ctypes.CDLL(None)
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    return fn


def heap_in_use() -> Tuple[Optional[int], str]:
    """Bytes the process has allocated and not freed (glibc mallinfo2: in-use chunks + mmapped
    blocks); falls back to the RSS, which also counts freed memory the allocator kept."""
    fn = _mallinfo2()
    if fn is not None:
        info = fn()
        return int(info.uordblks + info.hblkhd), "malloc in-use"
    return _rss_bytes(), "RSS"


class _PeakSampler:
    """Samples `heap_in_use()` every few ms on a thread (torch ops release the GIL)."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.baseline, self.source = heap_in_use()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            value, _ = heap_in_use()
            if value is not None and (self.peak is None or value > self.peak):
                self.peak = value
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        value, _ = heap_in_use()
        if value is not None and (self.peak is None or value > self.peak):
            self.peak = value


def _cpu_snapshot() -> Optional[Tuple[float, float, float]]:
    """(wall s, busy CPU-seconds of the whole machine, CPU-seconds of this process) or None."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]
        busy = (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    t = os.times()
    return time.monotonic(), busy, t.user + t.system


def background_cores(start, end) -> Optional[float]:
    """Average number of cores other processes kept busy between two `_cpu_snapshot()`s."""
    if start is None or end is None or end[0] <= start[0]:
        return None
    return max(0.0, ((end[1] - start[1]) - (end[2] - start[2])) / (end[0] - start[0]))


def cpu_model() -> str:
    """'model name' from /proc/cpuinfo, with family/model/MHz when the name alone is vague."""
    fields: Dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # first processor only
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    extra = [f"{k} {fields[k]}" for k in ("cpu family", "model", "cpu MHz") if k in fields]
    return f"{name} ({', '.join(extra)})" if extra else name


def num_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def measure_matmul_flops(n: int = 4096, reps: int = 5) -> float:
    """Best FLOP/s of a jitted fp32 [n, n] @ [n, n] on the default device."""
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(ka, (n, n), jnp.float32)
    b = jax.random.normal(kb, (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    times = _time_steps(lambda: matmul(a, b).block_until_ready(), reps, 1)
    return 2.0 * n ** 3 / min(times)


def measure_torch_matmul_flops(n: int = 4096, reps: int = 5) -> Optional[float]:
    try:
        import torch
    except ImportError:
        return None
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    torch.matmul(a, b)
    times = _time_steps(lambda: torch.matmul(a, b), reps, 0)
    return 2.0 * n ** 3 / min(times)


def _memory_analysis_bytes(compiled) -> Optional[int]:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if m is None:
        return None
    total = 0
    for name in ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes"):
        total += int(getattr(m, name, 0) or 0)
    total -= int(getattr(m, "alias_size_in_bytes", 0) or 0)
    return total


def _device_peak_bytes() -> Optional[int]:
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001
        return None
    return None if not stats else stats.get("peak_bytes_in_use")


def _version(dist: str) -> Optional[str]:
    try:
        from importlib import metadata
        return metadata.version(dist)
    except Exception:  # noqa: BLE001 - not installed
        return None


def machine_info() -> Dict[str, Any]:
    dev = jax.devices()[0]
    info = dict(cpu=cpu_model(), cores=num_cores(), backend=jax.default_backend(), device_kind=dev.device_kind,
                device_count=jax.device_count(), jax=jax.__version__, python=platform.python_version(),
                platform=platform.platform())
    for dist in ("jaxlib", "flax", "optax", "torch", "transformers"):
        info[dist] = _version(dist)
    try:
        info["loadavg"] = os.getloadavg()
    except OSError:
        pass
    return info
