"""The one runner: a workload's requests through targets, trials interleaved, equal warm-up,
one raw record per request per target per trial.

:func:`run_workload` starts each group of targets (most workloads have one group), gives
the workload a :class:`Run`, and returns a results document (env, config, records,
summary). A workload never touches a target itself; it calls the run's primitives:

- :meth:`Run.sequence`: one request at a time, each through every target in turn, the
  target order rotated per request and trial (drift hits all alike);
- :meth:`Run.batch` (``concurrency`` in flight), :meth:`Run.wave` (all at once) and
  :meth:`Run.arrivals` (an open-loop schedule): one target at a time, the order rotated
  per trial, each target's wall time, CPU time (caller and target processes) and counter
  deltas kept as a *measurement*;
- :meth:`Run.warm`: the same untimed requests through every target, logged;
- :meth:`Run.trials`: the trial loop; a trial disturbed by other processes' CPU load is
  dropped and re-run (up to ``max_reruns``).

Equal treatment is recorded in ``config["treatment"]``: the requests' hash, sampling, the
warm-up each target got and the order rules used. A target that lacks an operation
(:class:`~krmlx.bench.targets.NotSupported`) is recorded once in ``config["not_supported"]``
and skipped for it; a target that dies is recorded in ``config["target_errors"]`` and gets
no more work; records accumulate in ``sink`` as they complete, so an interrupted run keeps
every finished one. ``config["clock"]`` (:func:`krmlx.timeline.clock_anchor`, read as the
run starts) places the records' monotonic times (``t_start_s``, the timelines) in wall time.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from dataclasses import dataclass, field

from ..doctor import collect_env, oversubscription_warning
from ..errors import ConfigError, KrmlxError
from ..hygiene import DEFAULT_LOAD_LIMIT_CORES, LoadMeter, cpu_seconds, settle
from ..models import model_bytes, resolve_model
from ..timeline import clock_anchor
from ..types import Request
from .targets import NotSupported, Target, make_target


def record_of(target: str, trial: int, request: Request, completion=None, error=None, *,
              t_start_s: float, workload: str, extra: dict | None = None) -> dict:
    """One raw record; TTFT, TPOT, ITL and E2E as the Completion defines them (TPOT per
    output token, :attr:`krmlx.types.Completion.tpot_ms`)."""
    rec = {"workload": workload, "target": target, "trial": trial, "request_id": request.id,
           "model": request.model, "chat": request.chat, "max_tokens": request.max_tokens,
           "ok": error is None, "error": None if error is None else
           f"{type(error).__name__}: {error}", "t_start_s": t_start_s}
    if completion is not None:
        c = completion
        rec.update({"ttft_ms": c.ttft_ms, "e2e_ms": c.e2e_ms, "tpot_ms": c.tpot_ms,
                    "itl_ms": c.itl_ms, "prompt_tokens": c.usage.prompt_tokens,
                    "output_tokens": c.usage.output_tokens,
                    "output_ids": list(c.token_ids), "output_text": c.text,
                    "finish_reason": c.finish_reason, "t_end_s": c.t_end_s,
                    **c.extra})  # the engine's done info (cached tokens, drafts), a server's
    else:
        now = time.perf_counter()
        rec.update({"ttft_ms": None, "e2e_ms": (now - t_start_s) * 1e3, "tpot_ms": None,
                    "itl_ms": [], "prompt_tokens": 0, "output_tokens": 0, "output_ids": [],
                    "output_text": "", "finish_reason": "error", "t_end_s": now})
    rec.update(extra or {})
    return rec


SEQUENCE_ORDERS = {
    "shuffle": "sequence: one request at a time, each through every target, the target order "
               "a fresh seeded shuffle per request and trial (each target follows each other "
               "equally often on average)",
    "rotate": "sequence: one request at a time, each through every target, the target order "
              "rotated per request and trial",
    "blocks": "sequence in blocks: one request at a time, all of a trial's requests of a "
              "series through one target, then through the next, the target order rotated per trial"}


def check_sequence_order(owner: str, order: str) -> None:
    """ConfigError naming ``owner`` unless ``order`` is one of :data:`SEQUENCE_ORDERS`."""
    if order not in SEQUENCE_ORDERS:
        raise ConfigError(f"{owner}: order must be one of {list(SEQUENCE_ORDERS)}, got {order!r}")


def rotate(names: list, k: int) -> list:
    k %= max(1, len(names))
    return names[k:] + names[:k]


def shuffled(names: list, trial: int, i: int) -> list:
    """``names`` in a seeded random order for request ``i`` of ``trial`` (the same every run)."""
    out = list(names)
    random.Random(f"krmlx-order:{trial}:{i}").shuffle(out)
    return out


def requests_hash(requests: list[Request]) -> str:
    h = hashlib.sha256()
    for r in requests:
        h.update(repr((r.prompt, r.prompt_ids, r.messages, r.system, r.max_tokens, r.temperature,
                       r.seed, r.chat, r.model)).encode())
    return h.hexdigest()[:16]


@dataclass
class Plan:
    trials: int = 1
    max_reruns: int = 2
    load_limit_cores: float = DEFAULT_LOAD_LIMIT_CORES
    trial_log: list = field(default_factory=list)


GAUGES = ("mean", "max", "min")  # stats named so are not counters: a difference means nothing


def stats_delta(before: dict, after: dict) -> dict:
    """Numeric counters of the stages, flattened to ``stage.key``: after - before (means and
    maxima left out; a batcher's ``mean_batch_size`` recomputed from its deltas)."""
    out = {}
    for stage, stats in after.items():
        for key, value in stats.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and not any(g in key for g in GAUGES):
                out[f"{stage}.{key}"] = value - before.get(stage, {}).get(key, 0)
        batches = out.get(f"{stage}.batches")
        if batches and f"{stage}.items" in out:
            out[f"{stage}.mean_batch_size"] = out[f"{stage}.items"] / batches
    return out


class Run:
    """What a workload's ``run`` drives: the started targets of one group and the record
    sink. See the module docstring for the primitives."""

    def __init__(self, targets: dict[str, Target], plan: Plan, workload: str, model: str,
                 sink: list, config: dict, progress=None, group: str = ""):
        self.targets, self.plan, self.workload, self.model = targets, plan, workload, model
        self.sink, self.config, self.progress, self.group = sink, config, progress, group
        self.measurements: list = config.setdefault("measurements", [])
        self.treatment: dict = config.setdefault("treatment", {"order": [], "warmup": {},
                                                               "requests": {}})
        self.not_supported: list = config.setdefault("not_supported", [])
        self.target_errors: dict = config.setdefault("target_errors", {})
        self._skip: set[tuple[str, str]] = set()

    # -- bookkeeping ---------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [n for n in self.targets if n not in self.target_errors]

    def add(self, record: dict) -> None:
        self.sink.append(record)
        if self.progress is not None:
            self.progress.update(1)

    def _order(self, rule: str) -> None:
        if rule not in self.treatment["order"]:
            self.treatment["order"].append(rule)

    def note_requests(self, series: str, requests: list[Request]) -> None:
        self.treatment["requests"][series or "-"] = {
            "n": len(requests), "sha256": requests_hash(requests),
            "max_tokens": sorted({r.max_tokens for r in requests}),
            "temperature": sorted({r.temperature for r in requests})}

    def _unsupported(self, name: str, op: str, exc: NotSupported) -> None:
        if (name, op) not in self._skip:
            self._skip.add((name, op))
            self.not_supported.append({"target": name, "op": op, "group": self.group,
                                       "reason": str(exc)})

    def supports(self, name: str, op: str) -> bool:
        return (name, op) not in self._skip and name not in self.target_errors

    def _check_alive(self, name: str, exc: BaseException) -> None:
        t = self.targets[name]
        if not t.alive and name not in self.target_errors:
            why = getattr(t, "why_dead", lambda: "")() or f"{type(exc).__name__}: {exc}"
            self.target_errors[name] = why

    # -- one operation -------------------------------------------------------------------
    async def do(self, name: str, kind: str, req: Request, trial: int, *, retries: int = 0,
                 retry_delay_s: float = 0.0, **extra) -> dict | None:
        """Run one op (``generate`` | ``switch`` | ``tokenize`` | ``load`` | ``ping``) on target
        ``name``; its record (added), or None when the target lacks the op.

        ``retries`` (generate): the caller plays a user who re-sends a failed request up to
        that many times, ``retry_delay_s`` apart; the record keeps ``attempts``,
        ``user_visible_failures``, ``failed_ms`` and ``user_wait_ms``, and its TTFT and E2E
        run from the first attempt."""
        if not self.supports(name, kind):
            return None
        target, t0 = self.targets[name], time.perf_counter()
        base = {"kind": kind, "group": self.group, **extra}
        try:
            if kind in ("generate", "switch") and retries:
                rec = await self._with_user_retries(name, target, req, trial, base, retries,
                                                    retry_delay_s)
            elif kind in ("generate", "switch"):
                done = await target.generate(req)
                rec = record_of(name, trial, req, done, t_start_s=t0, workload=self.workload,
                                extra=base)
            else:
                if kind == "tokenize":
                    value = await target.tokenize(req.prompt, model=req.model)
                    more = {"prompt_tokens": len(value), "finish_reason": "tokenized"}
                elif kind == "load":
                    value = await target.load(req.model)
                    more = {"finish_reason": "loaded", "cached": bool(value.get("cached"))}
                elif kind == "ping":
                    await target.call("ping")
                    more = {"finish_reason": "pong"}
                else:
                    raise ValueError(f"unknown op kind {kind!r}")
                t1 = time.perf_counter()
                rec = record_of(name, trial, req, t_start_s=t0, workload=self.workload,
                                extra={**base, "e2e_ms": (t1 - t0) * 1e3, "t_end_s": t1, **more})
        except NotSupported as e:
            self._unsupported(name, kind, e)
            return None
        except Exception as e:  # noqa: BLE001 - an error is a record, not a crash
            rec = record_of(name, trial, req, error=e, t_start_s=t0, workload=self.workload,
                            extra=base)
            self._check_alive(name, e)
        self.add(rec)
        return rec

    async def _with_user_retries(self, name, target, req, trial, base, retries, delay_s) -> dict:
        t_first = time.perf_counter()
        failed_ms = wait_ms = 0.0
        last = None
        for attempt in range(retries + 1):
            t0 = time.perf_counter()
            try:
                done = await target.generate(req)
            except NotSupported:
                raise
            except Exception as e:  # noqa: BLE001 - the user sees it and retries
                failed_ms += (time.perf_counter() - t0) * 1e3
                last = e
                self._check_alive(name, e)
                if attempt < retries and delay_s:
                    t1 = time.perf_counter()
                    await asyncio.sleep(delay_s)
                    wait_ms += (time.perf_counter() - t1) * 1e3
                continue
            ttft = (done.token_times_s[0] - t_first) * 1e3 if done.token_times_s else None
            return record_of(name, trial, req, done, t_start_s=t_first, workload=self.workload,
                             extra={**base, "attempts": attempt + 1, "user_visible_failures": attempt,
                                    "failed_ms": failed_ms, "user_wait_ms": wait_ms,
                                    "ttft_ms": ttft, "e2e_ms": (done.t_end_s - t_first) * 1e3})
        return record_of(name, trial, req, error=last, t_start_s=t_first, workload=self.workload,
                         extra={**base, "attempts": retries + 1,
                                "user_visible_failures": retries + 1, "failed_ms": failed_ms,
                                "user_wait_ms": wait_ms})

    async def probe(self, name: str, method: str, params: dict | None = None):
        """A target's unary call outside any timing (e.g. ``group_probe``, ``stats``); its
        value, or None when the target has no such call (recorded as not supported)."""
        try:
            return await self.targets[name].call(method, params)
        except NotSupported as e:
            self._unsupported(name, method, e)
            return None

    # -- schedules -----------------------------------------------------------------------
    async def sequence(self, requests: list[Request], trial: int, *, kind: str = "generate",
                       series: str = "", targets: list[str] | None = None, measure: bool = False,
                       retries: int = 0, retry_delay_s: float = 0.0, order: str = "shuffle",
                       **extra) -> None:
        """Each request through every target (or ``targets``), one at a time. ``order``
        ``shuffle`` (the default): request by request, every target in turn, in a fresh
        seeded random order each time, so each target follows each other equally often: on
        a small host what the previous target leaves running (a server finishing its request
        after it answered) costs the one that follows, and a fixed cycle would charge it to
        the same target every time (docs/methodology.md); ``rotate``: the same with the order
        rotated per request and trial (a fixed cycle); ``blocks``: all the requests through
        one target, then all through the next, the target order rotated per trial (a target
        follows itself but at a block's start). ``measure``: each target's counter deltas
        over the sequence are kept as a measurement. ``retries``: see :meth:`do`."""
        check_sequence_order("sequence", order)
        self._order(SEQUENCE_ORDERS[order])
        self.note_requests(series, requests)
        names = [n for n in (targets or list(self.targets)) if n in self.targets]
        before = {n: self.targets[n].stats() for n in names} if measure else {}
        if order == "shuffle":
            plan = [(name, req) for i, req in enumerate(requests)
                    for name in shuffled(names, trial, i)]
        elif order == "rotate":
            plan = [(name, req) for i, req in enumerate(requests)
                    for name in rotate(names, i + trial)]
        else:
            plan = [(name, req) for name in rotate(names, trial) for req in requests]
        for name, req in plan:
            await self.do(name, kind, req, trial, series=series, retries=retries,
                          retry_delay_s=retry_delay_s, **extra)
        for name in before:
            self.measurements.append({"trial": trial, "series": series, "target": name,
                                      "group": self.group,
                                      **stats_delta(before[name], self.targets[name].stats())})

    async def _measured(self, name: str, trial: int, series: str, body, **extra) -> None:
        """Run ``body()`` for target ``name`` as one timed stretch: wall time, CPU seconds of
        the caller and of the target's processes, counter deltas -> a measurement."""
        target = self.targets[name]
        settle()
        before, pids = target.stats(), target.pids()
        c0, w0, t0 = time.process_time(), cpu_seconds(pids), time.perf_counter()
        await body()
        wall = time.perf_counter() - t0
        self.measurements.append({
            "trial": trial, "series": series, "target": name, "group": self.group,
            "wall_s": wall, "caller_cpu_s": time.process_time() - c0,
            "target_cpu_s": cpu_seconds(pids) - w0, **extra,
            **stats_delta(before, target.stats())})

    async def _setup(self, name: str, items) -> None:
        """Untimed, unrecorded ops on one target (the same start for every target)."""
        target = self.targets[name]
        for kind, req in items or ():
            try:
                if kind == "load":
                    await target.load(req.model)
                else:
                    await target.generate(req)
            except NotSupported as e:
                self._unsupported(name, kind, e)
            except Exception:  # noqa: BLE001 - a setup step's failure shows in the records after
                pass

    async def batch(self, items: list[tuple[str, Request]], trial: int, *, series: str,
                    concurrency: int, targets: list[str] | None = None, setup=None,
                    **extra) -> None:
        """(kind, request) items with ``concurrency`` in flight (a closed loop: the next
        starts when one ends), one target at a time (order rotated per trial). ``setup``:
        (kind, request) ops run untimed on each target first; ``extra``: fields recorded on
        every record and on the measurement."""
        self._order(f"{series}: one target at a time, {concurrency} in flight, the target "
                    "order rotated per trial")
        self.note_requests(series, [r for _, r in items])
        for name in rotate(targets or list(self.targets), trial):
            if name in self.target_errors:
                continue
            await self._setup(name, setup)
            sem = asyncio.Semaphore(concurrency)

            async def one(kind, req, name=name, sem=sem):
                async with sem:
                    await self.do(name, kind, req, trial, series=series, **extra)

            await self._measured(name, trial, series,
                                 lambda name=name, one=one: asyncio.gather(
                                     *(one(k, r) for k, r in items)),
                                 **{"concurrency": concurrency, **extra})

    async def wave(self, requests: list[Request], trial: int, *, series: str, **extra) -> None:
        """All ``requests`` at once, one target at a time (order rotated per trial); a
        target with a wave of its own (raw BatchGenerator) runs it as one."""
        self._order(f"{series}: one wave per target, one target at a time, the target order "
                    "rotated per trial")
        self.note_requests(series, requests)
        for name in rotate(list(self.targets), trial):
            if name in self.target_errors or not self.supports(name, "generate"):
                continue
            await self._measured(name, trial, series,
                                 lambda name=name: self._wave_on(name, requests, trial, series, extra),
                                 concurrency=len(requests), **extra)

    async def _wave_on(self, name, requests, trial, series, extra) -> None:
        target = self.targets[name]
        if type(target).run_wave is Target.run_wave:
            await asyncio.gather(*(self.do(name, "generate", r, trial, series=series, **extra)
                                   for r in requests))
            return
        t0 = time.perf_counter()
        try:
            outs = await target.run_wave(requests)
        except NotSupported as e:
            self._unsupported(name, "generate", e)
            return
        for req, out in zip(requests, outs, strict=True):
            ok = not isinstance(out, BaseException)
            self.add(record_of(name, trial, req, out if ok else None, None if ok else out,
                               t_start_s=t0, workload=self.workload,
                               extra={"kind": "generate", "group": self.group, "series": series,
                                      **extra}))

    async def arrivals(self, schedule: list[tuple[float, str, Request]], trial: int, *,
                       series: str, targets: list[str] | None = None, **extra) -> None:
        """An open-loop schedule of (offset s, kind, request), one target at a time (order
        rotated per trial): each request is sent at its offset whether or not earlier ones
        have finished; ``scheduled_s`` and ``lag_ms`` (how late it was sent) are recorded."""
        self._order(f"{series}: open-loop arrivals, one target at a time, the target order "
                    "rotated per trial")
        self.note_requests(series, [r for _, _, r in schedule])
        for name in rotate(targets or list(self.targets), trial):
            if name in self.target_errors:
                continue

            async def body(name=name):
                t0 = time.perf_counter()

                async def one(at, kind, req):
                    await asyncio.sleep(max(0.0, at - (time.perf_counter() - t0)))
                    late = (time.perf_counter() - t0 - at) * 1e3
                    await self.do(name, kind, req, trial, series=series, scheduled_s=at,
                                  lag_ms=late, **extra)

                await asyncio.gather(*(one(*item) for item in schedule))

            await self._measured(name, trial, series, body, **extra)

    async def warm(self, items: list[tuple[str, Request]], *, label: str,
                   concurrency: int = 1) -> None:
        """The same untimed (kind, request) items through every target (errors ignored:
        faults may hit), ``concurrency`` at a time; logged in the treatment."""
        for name, target in self.targets.items():
            sem = asyncio.Semaphore(concurrency)

            async def one(kind, req, target=target, sem=sem):
                async with sem:
                    try:
                        if kind == "tokenize":
                            await target.tokenize(req.prompt, model=req.model)
                        elif kind == "load":
                            await target.load(req.model)
                        elif kind == "ping":
                            await target.call("ping")
                        else:
                            await target.generate(req)
                    except Exception:  # noqa: BLE001 - warm-up: whatever happens, untimed
                        pass

            await asyncio.gather(*(one(k, r) for k, r in items))
            self.treatment["warmup"].setdefault(name, []).append(
                f"{label}: {len(items)} untimed, {concurrency} at a time")

    async def trials(self, body, *, series: str = "") -> None:
        """``await body(trial)`` for each trial under a LoadMeter; a trial disturbed by
        other processes (over ``load_limit_cores``) is dropped and re-run, up to
        ``max_reruns`` times."""
        trial = reruns = 0
        while trial < self.plan.trials:
            start, mstart = len(self.sink), len(self.measurements)
            settle()
            with LoadMeter() as meter:
                await body(trial)
            disturbed = meter.cores > self.plan.load_limit_cores
            keep = not disturbed or reruns >= self.plan.max_reruns
            self.plan.trial_log.append({"trial": trial, "group": self.group, "series": series,
                                        "disturbed": disturbed, "kept": keep,
                                        "foreign_cpu_cores": round(meter.cores, 3)})
            if not keep:
                reruns += 1
                del self.sink[start:], self.measurements[mstart:]
                continue
            for rec in self.sink[start:]:
                rec["foreign_cpu_cores"], rec["disturbed"] = round(meter.cores, 3), disturbed
            trial += 1

    # -- the workload's requests ---------------------------------------------------------
    def tokenizer(self):
        """The model's tokenizer in this process (no weights), for prompt lengths."""
        if getattr(self, "_tokenizer", None) is None:
            from mlx_lm.utils import load_tokenizer

            from ..models import resolve_model

            self._tokenizer = load_tokenizer(resolve_model(self.model))
        return self._tokenizer

    def prompt_tokens(self, request: Request) -> int:
        from .. import gen

        if request.prompt_ids is not None:
            return len(request.prompt_ids)
        return len(gen.encode_prompt(self.tokenizer(), request.to_params()))

    def shapes(self, requests: list[Request]) -> list[Request]:
        """One request per distinct (prompt length, model) of ``requests``: the warm-up that
        gives every target each shape once (MLX's GPU kernels compile per shape)."""
        from dataclasses import replace

        seen, out = set(), []
        for r in requests:
            key = (self.prompt_tokens(r), r.model)
            if key not in seen:
                seen.add(key)
                out.append(replace(r, id=f"warm-{r.id}"))
        return out


async def run_workload(workload, model: str, *, targets=None, phases: str | None = None,
                       trials: int = 1, records: list | None = None, config: dict | None = None,
                       progress=None, max_reruns: int | None = None) -> dict:
    """Run ``workload`` on ``model`` through ``targets`` (specs or Target objects; None:
    the workload's defaults for ``phases``); a results document (env, config, records,
    summary). ``records`` and ``config`` fill as the run goes, so a caller that catches
    Ctrl-C still holds what completed. A target that can't start before anything is
    measured is an error naming it; later failures are recorded and the run goes on."""
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"trials: must be an int >= 1, got {trials!r}")
    workload.validate(model)
    for m in dict.fromkeys([model, *workload.models(model)]):
        resolve_model(m)
    given = workload.with_aa_control([make_target(t) for t in targets] if targets
                                     else workload.default_targets(phases, model))
    records = [] if records is None else records
    config = {} if config is None else config
    config.update({"workload": workload.name, "model": model, "trials": trials,
                   "smoke": workload.smoke, "params": workload.params(),
                   "phases": None if targets else (phases or workload.default_phases),
                   "models": workload.models(model), "targets": {}, "stage_stats": {},
                   "not_supported": [], "target_errors": {}, "clock": clock_anchor()})
    adapted = []
    for t in given:
        try:
            adapted.append(workload.adapt(t))
        except NotSupported as e:
            config["not_supported"].append({"target": t.name, "op": "adapt", "reason": str(e)})
    names = [t.name for t in adapted]
    if len(set(names)) != len(names):
        raise ConfigError(f"targets: names must differ, got {names} (name one: NAME=SPEC)")
    groups = workload.groups(adapted)
    if not any(g for _, g in groups):
        raise ConfigError(f"{workload.name}: no target to run")
    reruns = (0 if workload.smoke else 2) if max_reruns is None else max_reruns
    plan = Plan(trials=trials, max_reruns=reruns)
    config["trial_log"] = plan.trial_log
    path = resolve_model(model)
    env = collect_env()
    from ..questions import load_questions

    env.update({"model": model, "model_path": str(path), "model_bytes": model_bytes(path),
                "question_set_sha256": load_questions()[1]})
    if progress is not None:
        planned = workload.planned_records(max(len(g) for _, g in groups))
        progress.total = planned * trials * len(groups) if planned else None
    t0 = time.perf_counter()
    for i, (gname, group) in enumerate(groups):
        started: dict[str, Target] = {}
        owned = [t for t in group if not t.started]  # a caller's started targets stay up
        try:
            for t in group:
                try:
                    await t.start(model)
                    started[t.name] = t
                except Exception as e:  # noqa: BLE001 - named, then raised or recorded
                    msg = f"could not start: {type(e).__name__}: {e}"
                    if i == 0 and not records:
                        raise KrmlxError(f"target {t.name!r} ({t.spec}): {msg}") from e
                    config["target_errors"][t.name] = msg
                config["targets"][t.name] = t.info()
            run = Run(started, plan, workload.name, model, records, config, progress, gname)
            await workload.run(run, i)
            for name, t in started.items():
                config["stage_stats"][name] = t.stats()
                config["targets"][name] = t.info()
        finally:
            await asyncio.gather(*(t.stop() for t in owned), return_exceptions=True)
    config["run_s"] = time.perf_counter() - t0
    env["threads"] = thread_use(env, config["targets"])
    return {"env": env, "config": config, "records": records,
            "summary": workload.summarize(records, config) if records else {}}


def thread_use(env: dict, targets: dict) -> dict:
    """Who used which threads on how many cores: the caller's BLAS threads, each worker's
    (from its ready frame), and a warning per worker that oversubscribes the cores."""
    workers = {name: info["worker"].get("blas_threads") for name, info in targets.items()
               if isinstance(info.get("worker"), dict) and info["worker"]}
    warnings = {name: w for name, n in workers.items()
                if (w := oversubscription_warning(env.get("cores_usable"), n))}
    return {"cores": env.get("cores"), "cores_usable": env.get("cores_usable"),
            "caller_blas_threads": env.get("caller_blas_threads"),
            "worker_blas_threads": workers, "oversubscription_warnings": warnings}


def summarize_partial(workload, records: list, config: dict) -> dict:
    """The summary of an interrupted run's records (an empty one if they can't be summarized)."""
    if not records:
        return {}
    try:
        return workload.summarize(records, config)
    except Exception as e:  # noqa: BLE001 - a partial run may lack what a table needs
        return {"error": f"summary of the partial run failed: {type(e).__name__}: {e}"}
