"""SIGTERM turned into a stop that every process agrees on, at a step all of them reach together.

A preemption notice (SIGTERM) may reach one host of a multi-host run and not the others. The save
that follows is a collective (Orbax writes one checkpoint from every process), so a host that acts
on its own signal would wait in that save for hosts that never join it. Here each process keeps
its own flag, and the flags are combined with a max over all devices at fixed steps
(`check_every`); every process reads the same combined value at the same step and stops there.

The max is dispatched at one check and read at the next, `check_every` steps later: it waits at
most for the step it was dispatched after, long finished unless the host runs more than
`check_every` steps ahead of the device, so the loop adds no per-check drain of the device and
keeps its real syncs at log, eval and save points. The price is latency: a signal is acted on 1 to
2 x `check_every` steps after it arrives.

With one process there is nobody to agree with: the local flag stops the loop at the next step.
"""

from __future__ import annotations

import logging
import signal
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

logger = logging.getLogger(__name__)


class Preemption:
    """Context manager: installs a SIGTERM handler that sets a local flag; `should_stop(done)` says
    whether the loop stops (and saves) after step `done`, the same answer on every process.

    check_every: steps between agreements on a multi-process run (> 0)."""

    def __init__(self, check_every: int = 10):
        if check_every <= 0:
            raise ValueError(f"config.preemption_check_every must be > 0, got {check_every}")
        self.check_every = check_every
        self.local = False  # this process got SIGTERM
        self.agreed = False  # some process got SIGTERM, as every process knows at the same step
        self._previous = None
        self._in_flight: Optional[jax.Array] = None  # the max dispatched at the previous check, shape ()
        self._multi = jax.process_count() > 1
        self._max = None
        self._checked = -1  # the last step that ran a check (multi-process)

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. a notebook worker): no handler
            self._previous = None
        return self

    def _handle(self, signum, frame):
        logger.warning("SIGTERM received on process %d: saving a checkpoint and stopping%s", jax.process_index(),
                       " at the next step all processes agree on" if self._multi else "")
        self.local = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    @property
    def requested(self) -> bool:
        """Whether a stop was agreed (what the loop reports as preempted)."""
        return self.agreed

    def should_stop(self, done: int) -> bool:
        """Call after every step `done` (1-based), on every process with the same `done` sequence;
        calling it again for the same step is allowed (one process: it sees a signal that arrived
        since; several: the same answer, nothing dispatched twice)."""
        if self.agreed:
            return True
        if not self._multi:
            self.agreed = self.local
            return self.agreed
        if done % self.check_every or done == self._checked:
            return False
        self._checked = done
        if self._in_flight is not None:
            # Dispatched `check_every` steps ago: normally computed already, so this read does not stall the device.
            self.agreed = bool(np.asarray(self._in_flight.addressable_data(0)))
            self._in_flight = None
            if self.agreed:
                logger.warning("process %d: a process got SIGTERM; all processes stop and save after step %d",
                               jax.process_index(), done)
                return True
        self._in_flight = self._dispatch_max(self.local)
        return False

    def _dispatch_max(self, flag: bool) -> jax.Array:
        """max over processes of `flag`, as a replicated int32 scalar not yet fetched."""
        if self._max is None:
            devices = np.array(jax.devices())
            self._mesh = Mesh(devices, ("devices",))  # every device of every process
            self._in_sharding = NamedSharding(self._mesh, PartitionSpec("devices"))
            self._max = jax.jit(jnp.max, out_shardings=NamedSharding(self._mesh, PartitionSpec()))
        # One element per device (shape (device_count,)): each process fills its own devices' elements.
        local = [jax.device_put(np.full((1,), int(flag), np.int32), d)
                 for d in self._in_sharding.addressable_devices]
        flags = jax.make_array_from_single_device_arrays((self._mesh.devices.size,), self._in_sharding, local)
        return self._max(flags)
