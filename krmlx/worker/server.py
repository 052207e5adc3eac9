"""The worker process: an MLX model host speaking frames over stdio (its read loop,
its threads, joining a distributed group, ``main``). The methods' handlers are in
:mod:`krmlx.worker.handlers`, the resident models in :mod:`krmlx.worker.registry`.

Threads: the main thread reads and decodes stdin and never waits on a handler;
``ping``, ``stats``, ``cancel``, ``list_models`` and stream acks are answered right there.
Tokenizer work (``tokenize``, ``detokenize``, ``batch_tokenize``, ``check_draft``,
``batch_check_draft``) runs on an aux thread; everything that touches MLX (``load_model``,
``unload_model``, ``generate``) runs on the single compute thread, through the scheduler.
Replies may therefore come back out of order: the client routes them by id.

stdout carries frames only: at start the real fd 1 is moved aside and ``sys.stdout``
points at stderr, so a stray print from any library can't corrupt the stream. Logs go
to stderr. Every error is an ``error`` frame with a code; the worker keeps serving.
The worker opens no network port.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import resource
import shutil
import sys
import threading
import time

from .. import validate
from ..blas import detect_blas
from ..errors import (
    BadRequest,
    KrmlxError,
    ProtocolDesync,
    ProtocolError,
    TransientError,
    UnknownMethod,
)
from ..framing import PLAIN, FramerConfig
from ..models import load_sharded, resolve_model
from .config import WorkerConfig
from .faults import FaultInjector, FaultPlan, crash_now
from .group import GROUP_BROKEN_EXIT_CODE, Leader, follow
from .handlers import HANDLERS
from .launch import BACKENDS, DOORBELLS_ENV, GROUP_FOLDER_ENV
from .prompt_cache import PromptCache, PromptCacheConfig
from .protocol import (
    METHODS,
    error_code,
    error_frame,
    heartbeat_frame,
    make_codec,
    ready_frame,
    result_frame,
)
from .registry import ModelRegistry
from .schedulers import GenerateJob, StreamOut, make_scheduler

log = logging.getLogger("krmlx.worker")
DESYNC_EXIT_CODE = 4  # the worker left because its stdin could not be read on
ALWAYS_ACCEPTED = {"faults"}  # a per-call fault plan: any method takes it


# method -> the value rules of krmlx.validate its params follow (types are METHODS' schema)
VALUE_CHECKS = {
    "generate": validate.check_generate_params,
    "tokenize": lambda p: validate.check_text("text", p["text"], allow_empty=True),
    "batch_tokenize": lambda p: validate.check_texts("texts", p["texts"]),
    "detokenize": lambda p: validate.check_token_ids("ids", p["ids"]),
}


def check_params(method: str, params) -> dict:
    """Types and ranges of a call's params (BadRequest naming the param); what needs the
    model (prompt_ids against its vocabulary) is checked in Worker._open_stream."""
    if not isinstance(params, dict):
        raise BadRequest(f"{method}: params must be a map, got {type(params).__name__}")
    schema = METHODS[method].params
    extra = set(params) - set(schema) - ALWAYS_ACCEPTED
    if extra:
        raise BadRequest(f"{method}: unknown params {sorted(extra)}")
    for name, (types, required) in schema.items():
        if name not in params:
            if required:
                raise BadRequest(f"{method}: missing param {name!r}")
            continue
        value = params[name]
        if not isinstance(value, types) or (isinstance(value, bool) and types is int):
            raise BadRequest(f"{method}: param {name!r} has type {type(value).__name__}")
    check = VALUE_CHECKS.get(method)
    if check is not None:
        try:
            check(params)
        except BadRequest as e:
            raise BadRequest(f"{method}: {e}") from None
    return params


class Worker:
    def __init__(self, out_fd: int, codec: str = "json", *, max_frame_bytes: int | None = None,
                 faults: FaultPlan | None = None, framing: FramerConfig = PLAIN,
                 scheduler: str = "serial", prompt_cache: dict | None = None,
                 group=None, ascii_frames: bool = False, max_prompt_tokens: int | None = None,
                 heartbeat_s: float | None = None, timeline: bool = True):
        if group is not None and (scheduler != "serial" or prompt_cache is not None):
            raise ValueError("a distributed worker runs the serial scheduler without "
                             "prompt-cache reuse")
        self.group = group  # krmlx.worker.group.Leader when this is rank 0 of a group
        self.heartbeat_s = heartbeat_s  # None: no heartbeats
        self.timeline = timeline  # each stream's hops, returned in its done frame
        self._t_in = 0.0  # when the bytes of the frames being dispatched were read
        self.ascii_frames = ascii_frames
        kw = {"max_frame_bytes": max_frame_bytes} if max_frame_bytes else {}
        self.codec = make_codec(codec, **kw)
        self.out_fd = out_fd
        self.framing = framing
        self.faults = FaultInjector(faults)
        self._write_lock = threading.Lock()
        self.streams: dict[int, StreamOut] = {}
        self.scheduler = make_scheduler(scheduler, self._job_failed)
        self.prompt_cache = None
        if prompt_cache is not None:
            self.prompt_cache = PromptCache(PromptCacheConfig(**prompt_cache))
        self.registry = ModelRegistry(max_prompt_tokens=max_prompt_tokens, group=group,
                                      prompt_cache=self.prompt_cache)
        self._aux: queue.Queue = queue.Queue()
        self.counters = {"frames_in": 0, "frames_out": 0, "bad_frames": 0, "calls": 0,
                         "errors": 0, "tokens_out": 0, "streams_done": 0}
        self._stopping = False
        self.exit_code = 0

    # -- output -------------------------------------------------------------------------
    def send(self, frame: dict) -> float:
        """Encode and write one frame; returns the time its pipe write started (the
        timeline's ``written``: the frame is encoded)."""
        with self._write_lock:  # one writer at a time; the codec's packer is not thread-safe
            data = self.codec.encode(frame)
            if self.ascii_frames and not data.isascii():  # through mlx.launch's text relay
                data = (json.dumps(frame, ensure_ascii=True, separators=(",", ":")) + "\n").encode()
            if len(data) > self.codec.max_frame_bytes:  # never send what the client must drop
                data = self.codec.encode(error_frame(
                    frame["id"], "frame_too_large",
                    f"reply of {len(data)} bytes exceeds the frame limit of {self.codec.max_frame_bytes}"))
            self.counters["frames_out"] += 1
            t = time.perf_counter()
            n = os.write(self.out_fd, data)
            while n < len(data):  # a full pipe takes part of it: write the rest
                data = data[n:]
                n = os.write(self.out_fd, data)
            return t

    def reply(self, fid: int, value) -> None:
        self.send(result_frame(fid, value))

    def fail(self, fid: int, exc: BaseException) -> None:
        self.counters["errors"] += 1
        self.send(error_frame(fid, error_code(exc), str(exc) or type(exc).__name__))

    # -- input --------------------------------------------------------------------------
    def serve(self, in_fd: int = 0) -> None:
        compute = threading.Thread(target=self.scheduler.run, name="compute", daemon=True)
        compute.start()
        threading.Thread(target=self._aux_loop, name="aux", daemon=True).start()
        blas = detect_blas()
        self.send(ready_frame(pid=os.getpid(), codec=self.codec.name,
                              scheduler=self.scheduler.name, blas=blas.kind,
                              blas_threads=blas.threads,
                              ranks=self.group.size if self.group else 1,
                              backend=self.group.backend if self.group else None))
        if self.heartbeat_s:
            threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()
        while not self._stopping:
            data = os.read(in_fd, 1 << 16)
            self._t_in = time.perf_counter()
            if not data:
                break
            for item in self.codec.feed(data):
                self.counters["frames_in"] += 1
                if isinstance(item, ProtocolError):
                    self.counters["bad_frames"] += 1
                    self.fail(getattr(item, "frame_id", -1), item)
                    if isinstance(item, ProtocolDesync):  # the pipe can't be read on: leave
                        log.error("%s; exiting", item)
                        self.exit_code = DESYNC_EXIT_CODE
                        self._stopping = True
                        break
                else:
                    self.dispatch(item)
        self.scheduler.stop()
        if self.group is not None:  # the other ranks leave once the compute thread is done
            compute.join(timeout=30)
            if not compute.is_alive():
                self.group.command("shutdown")

    def _heartbeat(self) -> None:
        """A frame every ``heartbeat_s``, busy or not: its own thread, so a long prefill on
        the compute thread still shows the client a live worker (a stopped one sends none)."""
        while not self._stopping:
            time.sleep(self.heartbeat_s)
            self.send(heartbeat_frame(self.scheduler.active))

    def dispatch(self, frame: dict) -> None:
        fid = frame["id"]
        try:
            if frame["kind"] == "ack":
                st = self.streams.get(fid)
                if st is not None:
                    st.ack(int(frame.get("n", 1)))
                return
            if frame["kind"] != "call":
                raise ProtocolError(f"a worker accepts call and ack frames, not {frame['kind']!r}")
            method = frame.get("method")
            if type(method) is not str or method not in METHODS:
                raise UnknownMethod(f"unknown method {method!r:.200}")
            params = check_params(method, frame.get("params", {}))
            self.counters["calls"] += 1
            model_id = frame.get("model")
            if METHODS[method].needs_model and not isinstance(model_id, str):
                raise BadRequest(f"{method}: needs a model id (string)")
            override = FaultPlan.from_dict(params.pop("faults", None))
            faults = self.faults.draw(method, override)
            if faults.crash_now:
                crash_now()
            if faults.error:
                raise InjectedFault(f"injected transient fault in {method}")
            self._route(fid, method, params, model_id, faults)
        except Exception as e:  # noqa: BLE001 - every failure becomes an error frame
            self.fail(fid, e)

    def _route(self, fid, method, params, model_id, faults) -> None:
        if method == "generate":
            self._open_stream(fid, params, model_id, faults)
        elif method == "shutdown":
            self.reply(fid, {"bye": os.getpid()})
            self._stopping = True
            for st in list(self.streams.values()):
                st.cancel()
        else:
            work = HANDLERS[method](self, params, model_id)
            runs = METHODS[method].runs
            if runs == "inline":
                self.reply(fid, work())
                return
            # Injected latency applies where a method runs (aux or compute thread); the
            # methods answered inline by the read loop take none, so it never blocks reading.
            job = _Job(fid, work, faults.latency_s, self.reply)
            if runs == "aux":
                self._aux.put(job)
            else:
                self.scheduler.submit(job)

    def _open_stream(self, fid, params, model_id, faults) -> None:
        """A ``generate`` call: its StreamOut, and its job to the scheduler."""
        entry = self.registry.entry(model_id)
        if params.get("prompt_ids"):
            # before the job exists: an id outside the embedding table would make the
            # model read outside it (wrong output, or a SIGSEGV of the whole worker),
            # and a prompt over the context is refused before any work
            entry.limits.check_ids(params["prompt_ids"])
        if fid in self.streams:
            raise BadRequest(f"generate: id {fid} is already streaming")
        out = StreamOut(fid, self._stream_send, self.framing, faults.crash_after_tokens,
                        crash_now, {"worker_read": self._t_in} if self.timeline else None)
        self.streams[fid] = out
        self.scheduler.submit(GenerateJob(out, entry, params, faults.latency_s,
                                          self.registry.draft_of(entry), self.prompt_cache,
                                          self.group))

    def stats(self) -> dict:
        return {**self.counters, "active_streams": len(self.streams), "pid": os.getpid(),
                "models": len(self.registry.models) - 1,
                "resident_bytes": self.registry.resident_bytes(),
                "rss_max_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "injected": dict(self.faults.injected), "scheduler": self.scheduler.name,
                "scheduler_counts": {k: getattr(self.scheduler, k) for k in
                                     ("steps", "prefills", "unmasked_steps", "solo_runs", "handoffs")
                                     if hasattr(self.scheduler, k)},
                "prompt_cache": dict(self.prompt_cache.stats) if self.prompt_cache else None,
                "group": dict(self.group.stats) if self.group else None}

    def _stream_send(self, frame: dict) -> float:
        if frame["kind"] == "token":
            self.counters["tokens_out"] += len(frame["tokens"])
        elif frame["kind"] == "done":
            self.streams.pop(frame["id"], None)
            self.counters["streams_done"] += 1
        return self.send(frame)

    def _job_failed(self, job, exc: BaseException) -> None:
        if self.group is not None and not isinstance(exc, KrmlxError):
            # a collective raised (a rank died: "[ring] connection to a peer was lost") or a
            # step failed halfway: the ranks are out of step, and an error frame would tell
            # the engine the group can go on. Leave: the launcher ends the group, the engine
            # sees WorkerCrashed and restarts it.
            log.error("group job failed (%s: %s); exiting", type(exc).__name__, exc)
            os._exit(GROUP_BROKEN_EXIT_CODE)
        if isinstance(job, GenerateJob):
            self.streams.pop(job.out.id, None)
            self.fail(job.out.id, exc)
        else:
            self.fail(job.fid, exc)

    def _aux_loop(self) -> None:
        while True:
            job = self._aux.get()
            try:
                job()
            except Exception as e:  # noqa: BLE001
                self.fail(job.fid, e)

class _Job:
    """A unary job: runs ``fn`` (after an injected delay) and replies with its value."""

    def __init__(self, fid: int, fn, delay: float, reply):
        self.fid, self.fn, self.delay, self.reply = fid, fn, delay, reply

    def __call__(self):
        if self.delay:
            time.sleep(self.delay)
        self.reply(self.fid, self.fn())


class InjectedFault(TransientError):
    """A fault the plan injected: the protocol calls it ``transient`` (worth retrying)."""


def join_group(backend: str):
    """Join the MLX distributed group the launcher set up. Rank 0 gets its Leader back;
    any other rank follows rank 0's commands here and exits when told (or on error)."""
    import mlx.core as mx  # MLX only after main() moved stdout aside

    g = mx.distributed.init(strict=True, backend=backend)
    mx.eval(mx.distributed.all_sum(mx.array(1), group=g))  # every rank has joined (read the hostfile)
    bells = [int(fd) for fd in os.environ.pop(DOORBELLS_ENV, "").split(",") if fd]
    if g.rank() == 0:
        folder = os.environ.pop(GROUP_FOLDER_ENV, None)
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
        return Leader(g, backend, bells)
    # A follower reads no frames: drain stdin (mlx.launch copies it to every rank).
    threading.Thread(target=_drain, args=(0,), daemon=True).start()
    code = 0
    try:
        follow(g, lambda model_id, trust: load_sharded(resolve_model(model_id), g, backend,
                                                       trust_remote_code=trust),
               bells[0] if bells else None)
    except BaseException:  # noqa: BLE001 - out of step: leave, the launcher ends the group
        log.exception("rank %d stopped", g.rank())
        code = 3
    os._exit(code)


def _drain(fd: int) -> None:
    while os.read(fd, 1 << 16):
        pass


def main(argv: list[str] | None = None) -> None:
    # Move the real stdout aside first: from here on only frames reach fd `out`.
    out = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    parser = argparse.ArgumentParser(prog="python -m krmlx.worker")
    parser.add_argument("--config", default=None,
                        help="a krmlx.worker.config.WorkerConfig as JSON (WorkerConfig.to_dict)")
    parser.add_argument("--distributed", default=None, choices=BACKENDS,
                        help="run as one rank of an MLX distributed group (see krmlx.worker.launch)")
    parser.add_argument("--ascii-frames", action="store_true",
                        help="escape non-ASCII text in JSON frames (for mlx.launch's text relay)")
    parser.add_argument("--log-level", default=os.environ.get("KRMLX_WORKER_LOG", "WARNING"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="[worker %(process)d] %(levelname)s %(message)s")
    try:
        config = WorkerConfig.from_dict(json.loads(args.config)) if args.config else WorkerConfig()
    except (ValueError, KrmlxError) as e:
        parser.error(f"--config: {e}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import mlx.core  # noqa: F401 - import before 'ready', so ready means ready

    group = None
    if args.distributed:
        group = join_group(args.distributed)  # returns on rank 0 only
    worker = Worker(out, config.wire_codec, max_frame_bytes=config.max_frame_bytes,
                    faults=config.faults, framing=config.framing or PLAIN,
                    scheduler=config.scheduler,
                    prompt_cache=config.prompt_cache.to_dict() if config.prompt_cache else None,
                    group=group, ascii_frames=args.ascii_frames,
                    max_prompt_tokens=config.max_prompt_tokens, heartbeat_s=config.heartbeat_s,
                    timeline=config.timeline)
    worker.serve(0)
    os._exit(worker.exit_code)
