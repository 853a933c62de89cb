"""Metrics to TensorBoard event files (tensorboardX: clu's writers need TensorFlow), a JSON-lines
file and the console. Only process 0 writes."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Mapping, Optional

import jax
import numpy as np

logger = logging.getLogger(__name__)


class MetricsWriter:
    def __init__(self, workdir: str, enabled: Optional[bool] = None, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            if tensorboard:
                try:
                    from tensorboardX import SummaryWriter
                    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
                except ImportError:
                    logger.warning("tensorboardX is not installed: no TensorBoard event files")

    def write(self, step: int, metrics: Mapping[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        values = {k: float(np.asarray(v)) for k, v in metrics.items()}
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps({"step": int(step), "split": prefix, "time": time.time(), **values}) + "\n")
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


def read_jsonl(path: str) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def format_metrics(step: int, total: int, metrics: Mapping[str, float]) -> str:
    keys = ("loss", "mlm_accuracy", "nsp_accuracy", "accuracy", "learning_rate", "grad_norm", "seq_per_s", "mfu")
    parts = [f"step {step}/{total}"]
    for key in keys:
        if key in metrics:
            value = float(metrics[key])
            parts.append(f"{key} {value:.3g}" if key in ("learning_rate", "mfu") else f"{key} {value:.4g}")
    return "  ".join(parts)
