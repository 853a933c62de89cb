"""Subprocess side of tests/test_budget_multihost.py: `python -m bert_jax.main` with one process's
training clock skewed, to show that process 0's clock alone decides where a multi-process run's
wall-clock budget (`config.train_seconds`) ends it.

  BUDGET_TEST_CLOCK=PID:KIND python tests/budget_worker.py --config=... --workdir=... [--config.x=...]
      the arguments and environment of bert_jax.main (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
      JAX_PROCESS_ID); the process whose JAX_PROCESS_ID is PID gets a skewed `loop.TrainingClock`:
        frozen: stays at the seconds resumed from the checkpoint (by it the budget never runs out)
        ahead:  the real clock plus 1e6 s (by it the budget is always spent)
      Only process 0's clock is ever logged or saved (its metrics.jsonl and the checkpoint's JSON), so
      the skew shows only if a process's own clock decides anything: that process would then stop at
      another step than the others, or never, and the run would hang in a collective.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402

from bert_jax import main  # noqa: E402
from bert_jax.training import loop  # noqa: E402


class FrozenClock(loop.TrainingClock):
    def seconds(self) -> float:
        return self.before


class AheadClock(loop.TrainingClock):
    def seconds(self) -> float:
        return super().seconds() + 1e6


if __name__ == "__main__":
    pid, _, kind = os.environ.get("BUDGET_TEST_CLOCK", "").partition(":")
    if pid and pid == os.environ.get("JAX_PROCESS_ID"):
        loop.TrainingClock = {"frozen": FrozenClock, "ahead": AheadClock}[kind]  # what loop.train constructs
    app.run(main.main)
