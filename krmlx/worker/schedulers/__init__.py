"""Where generation runs: one compute thread that owns all MLX work, fed by a scheduler.

Every scheduler has ``submit(job)``, ``run()`` (the compute thread's loop), ``stop()``,
``name`` and ``active``; a job is a :class:`~.stream.GenerateJob` or a callable (a load,
an unload). Each stream's tokens go out through :class:`~.stream.StreamOut`.

- ``serial.py``: :class:`SerialScheduler`, one generation at a time (:func:`run_generate`);
- ``batch.py``: :class:`BatchScheduler`, continuous batching (``batched``,
  ``batched-staged``);
- ``auto.py``: :class:`AutoScheduler`, one stream solo, two or more batched (the default);
- ``stream.py``: what they share (StreamOut, GenerateJob, the first steps of a job).

:data:`SCHEDULERS` is the one list of their names (the config, the CLI and ``krmlx
serve`` read it); :func:`make_scheduler` builds one by name.
"""

from __future__ import annotations

from functools import partial

from .auto import AutoScheduler
from .batch import Active, BatchScheduler
from .serial import SerialScheduler, run_generate
from .stream import GenerateJob, StreamOut, encode_job, job_may_start

_MAKERS = {
    "auto": AutoScheduler,
    "serial": SerialScheduler,
    "batched": BatchScheduler,
    "batched-staged": partial(BatchScheduler, staged=True),
}
SCHEDULERS = tuple(_MAKERS)  # the only list of scheduler names

__all__ = ["SCHEDULERS", "Active", "AutoScheduler", "BatchScheduler", "GenerateJob",
           "SerialScheduler", "StreamOut", "encode_job", "job_may_start", "make_scheduler",
           "run_generate"]


def make_scheduler(name: str, on_error):
    """The scheduler named ``name``; ``on_error(job, exc)`` reports a job that failed."""
    if name not in _MAKERS:
        raise ValueError(f"scheduler: must be one of {SCHEDULERS}, got {name!r}")
    return _MAKERS[name](on_error)
