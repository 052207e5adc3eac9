"""The worker as an MLX distributed group: rank 0 leads, the other ranks follow in lockstep.

Rank 0 is the worker the engine talks to (stdio frames, the read loop, the aux thread);
ranks 1..N-1 read no frames. Every model-touching step runs on all ranks, in the same
order, on each rank's compute thread, with the model loaded tensor-parallel
(``mlx_lm.utils.sharded_load``): its layers all_sum their partial results, so every rank
computes the same logits and samples the same token.

What the ranks share, all through ``mx.distributed.all_sum`` (rank 0 contributes the
value, the others zeros; as mlx-lm's server shares requests):

- a *command* before each model step: ``load``, ``unload``, ``generate`` (with the
  prompt's token ids and a seed, so sampling agrees), ``probe`` or ``shutdown``;
  JSON bytes, never pickle: a rank runs no code it is sent;
- a *step flag* before each decode step of a generation: rank 0's "go on" (0 when the
  stream was cancelled). Without it a cancel on rank 0 would leave the others waiting in
  the next step's collectives. EOS and max_tokens need no flag: every rank sees the
  same tokens and stops at the same step;
- after a load, whether every rank loaded it (a rank that failed says so; rank 0 then
  fails the call with a clear error and all ranks drop the model).

Doorbells (krmlx's launcher only): a follower waiting in a collective spins (a core on
the ring backend, an NCCL kernel on a GPU), so between commands it waits on a pipe
instead: rank 0 writes one byte to each follower's pipe before each command. A pipe that
closes (rank 0 died) ends the follower; a follower that dies closes its pipe's read end,
and rank 0 (watching its write ends) leaves at once. Across hosts (mlx.launch) there are
no pipes and idle followers spin.

A rank that dies takes the group down: the launcher (:mod:`krmlx.worker.launch`, or
``mlx.launch``) kills the other ranks when one exits, so rank 0's stdout closes and
the engine sees :class:`~krmlx.errors.WorkerCrashed`; nothing waits on a collective
forever. Rank 0 does not count on the launcher alone: a collective that raises, or a
follower's closed doorbell, makes it exit (:data:`GROUP_BROKEN_EXIT_CODE`), never answer
with an error frame as if the group could go on (the ring backend, once a peer is gone,
may also just block in the next collective). Limits: the serial scheduler only; no
draft model, no prompt-cache reuse.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time

import orjson

from .. import gen

log = logging.getLogger("krmlx.worker.group")
GROUP_BROKEN_EXIT_CODE = 3  # rank 0 left: a collective failed (a rank died) or a step failed halfway


def _all_sum(x, group):
    import mlx.core as mx

    return mx.distributed.all_sum(x, group=group)


def share(group, obj: dict | None = None) -> dict:
    """Rank 0's ``obj`` on every rank (the others pass nothing): its JSON bytes' length,
    then the bytes, each an all_sum."""
    import mlx.core as mx
    import numpy as np

    if group.rank() == 0:
        data = orjson.dumps(obj)
        mx.eval(_all_sum(mx.array(len(data), dtype=mx.int32), group))
        mx.eval(_all_sum(mx.array(np.frombuffer(data, dtype=np.uint8)), group))
        return obj
    n = _all_sum(mx.array(0, dtype=mx.int32), group).item()
    data = _all_sum(mx.zeros((n,), dtype=mx.uint8), group)
    return orjson.loads(bytes(np.array(data, copy=False)))


def step_flag(group, go: bool = False) -> bool:
    """Rank 0's decision (go on or stop) on every rank; the others' ``go`` is ignored."""
    import mlx.core as mx

    mine = 1 if (go and group.rank() == 0) else 0
    return _all_sum(mx.array(mine, dtype=mx.int32), group).item() > 0


def all_ok(group, ok: bool) -> int:
    """How many ranks were *not* ok (0: all were)."""
    import mlx.core as mx

    return int(_all_sum(mx.array(0 if ok else 1, dtype=mx.int32), group).item())


def probe(group, hidden: int = 128, iters: int = 50) -> dict:
    """The cost of one collective on this group: the median time of an all_sum of one
    int32 (what a step flag costs) and of a float32 vector of ``hidden`` (what each
    tensor-parallel layer all_sums per token, twice: attention and MLP), in µs."""
    import mlx.core as mx

    def median_us(make) -> float:
        times = []
        for _ in range(iters):
            x = make()
            mx.eval(x)
            t0 = time.perf_counter()
            mx.eval(_all_sum(x, group))
            times.append((time.perf_counter() - t0) * 1e6)
        times.sort()
        return times[len(times) // 2]

    return {"ranks": group.size(), "iters": iters, "hidden": hidden,
            "allsum_scalar_us": median_us(lambda: mx.array(1, dtype=mx.int32)),
            "allsum_hidden_us": median_us(lambda: mx.ones((1, hidden), dtype=mx.float32))}


class Leader:
    """Rank 0's side of the group, used by the worker on its compute thread (collectives
    are never run from two threads at once). ``stats`` go into the worker's ``stats``."""

    def __init__(self, group, backend: str, doorbells: list[int] = ()):
        self.group = group
        self.doorbells = list(doorbells)  # write ends of the followers' pipes (may be none)
        self.size = group.size()
        self.backend = backend
        self.stats = {"ranks": self.size, "backend": backend, "commands": 0, "steps": 0,
                      "step_sync_s": 0.0}
        self.leaving = False  # set before the shutdown command: followers then exit on purpose
        if self.doorbells:
            threading.Thread(target=self._watch_followers, name="followers", daemon=True).start()

    def _watch_followers(self) -> None:
        """Exit when a follower's doorbell pipe loses its reader (the follower died): the
        group is broken, whatever the launcher does and wherever the compute thread waits."""
        poller = select.poll()
        for fd in self.doorbells:
            poller.register(fd, select.POLLERR | select.POLLHUP)
        poller.poll()  # blocks until a pipe's reader is gone
        if self.leaving:  # the followers exit because rank 0 told them to
            return
        log.error("a follower rank is gone (its doorbell pipe closed); exiting")
        os._exit(GROUP_BROKEN_EXIT_CODE)

    def command(self, op: str, **fields) -> None:
        if op == "shutdown":
            self.leaving = True
        self.stats["commands"] += 1
        for fd in self.doorbells:
            os.write(fd, b"\x01")
        share(self.group, {"op": op, **fields})

    def step(self, go: bool) -> bool:
        t0 = time.perf_counter()
        go = step_flag(self.group, go)
        self.stats["steps"] += 1
        self.stats["step_sync_s"] += time.perf_counter() - t0
        return go

    def all_ok(self, ok: bool) -> int:
        return all_ok(self.group, ok)

    def probe(self, hidden: int, iters: int) -> dict:
        self.command("probe", hidden=hidden, iters=iters)
        return probe(self.group, hidden, iters)


def follow(group, load, doorbell: int | None = None) -> None:
    """A follower rank's loop: run rank 0's commands until ``shutdown``. ``load(model_id,
    trust_remote_code)`` returns (model, tokenizer) loaded tensor-parallel; ``doorbell``, if given, is the read
    end of this rank's pipe from rank 0 (wait on it, not in a spinning collective). An
    unexpected error ends the process (the launcher then takes the group down): a rank
    out of step must not go on."""
    import mlx.core as mx

    models: dict[str, tuple] = {}
    while True:
        if doorbell is not None and not os.read(doorbell, 1):
            raise RuntimeError(f"rank {group.rank()}: rank 0 is gone (its doorbell closed)")
        cmd = share(group)
        op = cmd.get("op")
        if op == "shutdown":
            return
        if op == "load":
            ok = True
            try:
                models[cmd["model"]] = load(cmd["model"], cmd.get("trust_remote_code") is True)
            except Exception:  # noqa: BLE001 - reported to rank 0 through all_ok
                log.exception("rank %d could not load %r", group.rank(), cmd["model"])
                ok = False
            if all_ok(group, ok):
                models.pop(cmd["model"], None)
        elif op == "unload":
            models.pop(cmd["model"], None)
            mx.clear_cache()
        elif op == "generate":
            follow_generate(group, models[cmd["model"]], cmd)
        elif op == "probe":
            probe(group, cmd["hidden"], cmd["iters"])
        else:
            raise RuntimeError(f"rank {group.rank()}: unknown command {op!r}")


def follow_generate(group, model_tok: tuple, cmd: dict) -> None:
    """The same generation as rank 0's, step for step, until rank 0 stops it or it ends."""
    model, tokenizer = model_tok
    steps = gen.iter_tokens(model, tokenizer, cmd["prompt_ids"], max_tokens=cmd["max_tokens"],
                            temperature=cmd["temperature"], seed=cmd["seed"],
                            top_p=cmd.get("top_p", 1.0))
    try:
        for _ in gen.TokenRun(steps, lambda: step_flag(group)):
            pass
    finally:
        steps.close()
