"""Metrics to TensorBoard event files (tensorboardX: clu's writers need TensorFlow), a JSON-lines
file and the console (log lines plus a tqdm progress bar). Only process 0 writes.

Also the utilisation arithmetic the loop logs: model FLOP/s over the peak FLOP/s of the devices in
use (MFU). The per-chip peak table lives in `bert_jax.flops` (one table for the benchmark and
the loop); CPUs have no entry, so on CPU MFU is logged only when the config names a peak.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Mapping, Optional, Sequence

import jax
import numpy as np

from bert_jax.training import paths

logger = logging.getLogger(__name__)

# Libraries whose INFO lines (compilation cache, checkpoint internals, absl's per-call logs) would bury the
# loop's own log lines ("jax" covers its submodules' loggers).
NOISY_LOGGERS = ("absl", "orbax", "jax")


def log_at_info_without_library_noise() -> None:
    """Root logger at INFO (the loop's lines), the libraries in NOISY_LOGGERS at WARNING: what every entry
    point (bert_jax.main, the ablation bench's child processes, benchmarks) sets."""
    logging.getLogger().setLevel(logging.INFO)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


class MetricsWriter:
    """metrics.jsonl and TensorBoard event files in `workdir` (a local path or a gs:// URL)."""

    def __init__(self, workdir: paths.PathLike, enabled: Optional[bool] = None, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        workdir = paths.workdir_path(workdir)
        self.jsonl_path = workdir / "metrics.jsonl"
        self._tb = None
        self._tb_upload = None  # (local event dir, workdir/tensorboard) when events are staged locally
        if self.enabled:
            workdir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from tensorboardX import SummaryWriter
                    self._tb = SummaryWriter(self._tensorboard_dir(workdir / "tensorboard"))
                except ImportError:
                    logger.warning("tensorboardX is not installed: no TensorBoard event files")

    def _tensorboard_dir(self, target) -> str:
        """Where tensorboardX writes: `target` when it can write there (local paths; gs:// with
        google-cloud-storage installed, tensorboardX's own GCS writer), else a local temp dir copied
        to `target` on close()."""
        if not paths.is_url(target) or _tensorboardx_writes(target):
            return os.fspath(target)
        local = tempfile.mkdtemp(prefix="bert_jax_tensorboard_")
        logger.warning("tensorboardX cannot write to %s (its gs:// writer needs google-cloud-storage): writing "
                       "TensorBoard event files to %s and copying them there when the run ends", target, local)
        self._tb_upload = (local, target)
        return local

    def write(self, step: int, metrics: Mapping[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        values = {k: float(np.asarray(v)) for k, v in metrics.items()}
        paths.append_line(self.jsonl_path, json.dumps({"step": int(step), "split": prefix, "time": time.time(),
                                                       **values}))
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(f"{prefix}/{key}", value, int(step))
            self._tb.flush()

    def write_text(self, step: int, tag: str, text: str) -> None:
        if self.enabled and self._tb is not None:
            self._tb.add_text(tag, text, int(step))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._tb_upload is not None:
            local, target = self._tb_upload
            paths.copy_tree(local, target)
            shutil.rmtree(local, ignore_errors=True)
            self._tb_upload = None


def _tensorboardx_writes(url) -> bool:
    """Whether tensorboardX can write event files to `url` itself."""
    from tensorboardX import record_writer
    return os.fspath(url).startswith("gs://") and bool(getattr(record_writer, "GCS_ENABLED", False))


def read_jsonl(path: paths.PathLike) -> list:
    text = paths.workdir_path(path).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def format_metrics(step: int, total: int, metrics: Mapping[str, float]) -> str:
    keys = ("loss", "mlm_accuracy", "nsp_accuracy", "accuracy", "learning_rate", "grad_norm", "seq_per_s", "mfu")
    parts = [f"step {step}/{total}"]
    for key in keys:
        if key in metrics:
            value = float(metrics[key])
            parts.append(f"{key} {value:.3g}" if key in ("learning_rate", "mfu") else f"{key} {value:.4g}")
    return "  ".join(parts)


# ------------------------------------------------------------------------------------ utilisation
def peak_flops_per_second(devices: Sequence[jax.Device], tflops_per_device: float = 0.0) -> Optional[float]:
    """Peak FLOP/s of `devices` together: `tflops_per_device` when > 0, else the per-chip (bf16 dense)
    table in `bert_jax.flops`. None when neither knows the chip (CPUs, unlisted accelerators):
    no peak, no MFU, rather than a made-up number."""
    if tflops_per_device < 0:
        raise ValueError(f"peak_tflops_per_device must be >= 0 (0 = look the chip up), got {tflops_per_device}")
    if not devices:
        raise ValueError("peak_flops_per_second needs at least one device")
    if tflops_per_device > 0:
        return tflops_per_device * 1e12 * len(devices)
    from bert_jax.flops import peak_tflops  # the one table of chip peaks
    kinds = {(d.platform, d.device_kind) for d in devices}
    if len(kinds) != 1:
        return None  # mixed chips: no single peak
    platform, kind = kinds.pop()
    peak = None if platform == "cpu" else peak_tflops(kind)
    return None if peak is None else peak * 1e12 * len(devices)


def utilisation(model_flops_per_step: float, steps_per_s: float, peak_flops: Optional[float]) -> dict:
    """{'model_tflops_per_s', and 'mfu' when the peak is known} for a measured step rate."""
    achieved = model_flops_per_step * steps_per_s
    out = {"model_tflops_per_s": achieved / 1e12}
    if peak_flops:
        out["mfu"] = achieved / peak_flops
    return out


# ---------------------------------------------------------------------------------- progress bar
class _AboveTheBar(logging.Handler):
    """Wraps a handler so that its output lands above the bar: tqdm clears the bar, the wrapped
    handler writes (a StreamHandler, absl's handler that picks its stream per record, a file),
    then tqdm redraws the bar."""

    def __init__(self, inner: logging.Handler, tqdm_class, stream):
        super().__init__()
        self.inner, self._tqdm, self._stream = inner, tqdm_class, stream

    def emit(self, record):
        with self._tqdm.external_write_mode(file=self._stream):
            self.inner.handle(record)


@contextlib.contextmanager
def _log_above_the_bar(tqdm_class, stream):
    root = logging.getLogger()
    original = list(root.handlers)
    root.handlers = [_AboveTheBar(h, tqdm_class, stream) for h in original]
    try:
        yield
    finally:
        root.handlers = original


class ProgressBar:
    """A tqdm bar over the training steps with the latest loss / accuracy / seq/s as its postfix.

    Shown only when `enabled` (process 0, config switch) and stderr is a terminal, so logs of
    batch jobs stay free of carriage-return noise; while it is shown, log lines appear above it.
    Disabled, every method is a no-op."""

    POSTFIX = (("loss", "loss"), ("mlm_accuracy", "mlm_acc"), ("accuracy", "acc"), ("seq_per_s", "seq/s"))

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, stream=None):
        stream = sys.stderr if stream is None else stream
        self.enabled = bool(enabled) and hasattr(stream, "isatty") and stream.isatty()
        self._bar = None
        self._redirect = contextlib.ExitStack()
        if self.enabled:
            from tqdm import tqdm
            self._bar = tqdm(total=total, initial=initial, file=stream, unit="step", dynamic_ncols=True,
                             smoothing=0.1)
            self._redirect.enter_context(_log_above_the_bar(tqdm, stream))

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def show(self, metrics: Mapping[str, float]) -> None:
        if self._bar is not None:
            self._bar.set_postfix({short: f"{float(metrics[key]):.4g}" for key, short in self.POSTFIX
                                   if key in metrics}, refresh=False)

    def close(self) -> None:
        self._redirect.close()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
