"""The worker process: an MLX model host speaking frames over stdio.

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

import hashlib
import json
import logging
import os
import queue
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field

from .. import gen, validate
from ..errors import (
    BadRequest,
    KrmlxError,
    ModelError,
    NotFound,
    ProtocolDesync,
    ProtocolError,
    TransientError,
    UnknownMethod,
    UnknownModel,
)
from ..framing import PLAIN, FramerConfig
from .config import WorkerConfig
from .faults import FaultInjector, FaultPlan, crash_now
from .group import GROUP_BROKEN_EXIT_CODE
from .launch import BACKENDS
from .protocol import (
    METHODS,
    NULL_MODEL,
    error_code,
    error_frame,
    heartbeat_frame,
    make_codec,
    ready_frame,
    result_frame,
)
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
    model (prompt_ids against its vocabulary) is checked in Worker._route."""
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


@dataclass
class ModelEntry:
    id: str
    model: object = None
    tokenizer: object = None
    path: str = ""
    bytes: int = 0
    load_ms: float = 0.0
    refs: int = 0
    last_used: float = field(default_factory=time.monotonic)
    vocab_hash: str = ""
    draft_id: str | None = None  # speculative decoding: the draft model's id
    limits: gen.PromptLimits = gen.NO_LIMITS  # vocabulary, context: what a prompt may be
    unloaded: bool = False  # set when an unload ran; jobs queued before it then fail cleanly


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
        self.max_prompt_tokens = max_prompt_tokens  # None: each model's context
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
        self.models: dict[str, ModelEntry] = {NULL_MODEL: ModelEntry(NULL_MODEL)}
        self.streams: dict[int, StreamOut] = {}
        self.scheduler = make_scheduler(scheduler, self._job_failed)
        self.prompt_cache = None
        if prompt_cache is not None:
            from .prompt_cache import PromptCache, PromptCacheConfig

            self.prompt_cache = PromptCache(PromptCacheConfig(**prompt_cache))
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
        from ..blas import detect_blas

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
        # Injected latency applies where a method runs (aux or compute thread); the
        # methods answered inline by the read loop take none, so it never blocks reading.
        delay = faults.latency_s
        if method == "ping":
            self.reply(fid, {"pid": os.getpid(), "t": time.time()})
        elif method == "stats":
            self.reply(fid, self.stats())
        elif method == "list_models":
            self.reply(fid, self.list_models())
        elif method == "cancel":
            st = self.streams.get(params["target"])
            if st is None:
                raise NotFound(f"cancel: no active stream with id {params['target']}")
            st.cancel()
            self.reply(fid, {"cancelled": params["target"]})
        elif method == "shutdown":
            self.reply(fid, {"bye": os.getpid()})
            self._stopping = True
            for st in list(self.streams.values()):
                st.cancel()
        elif method == "load_model":
            self.scheduler.submit(_Job(fid, lambda: self.load_model(model_id, params), delay, self.reply))
        elif method == "unload_model":
            self.scheduler.submit(_Job(fid, lambda: self.unload_model(model_id), delay, self.reply))
        elif method == "group_probe":
            if self.group is None:
                raise BadRequest("group_probe: this worker is one process, not a distributed group")
            hidden, iters = params.get("hidden", 128), params.get("iters", 50)
            if not (0 < hidden <= 1 << 20 and 0 < iters <= 10_000):
                raise BadRequest("group_probe: hidden must be in [1, 2**20] and iters in [1, 10000]")
            self.scheduler.submit(_Job(fid, lambda: self.group.probe(hidden, iters), delay, self.reply))
        elif METHODS[method].runs == "aux":
            entry = self.entry(model_id)
            handler = getattr(self, "do_" + method)
            self._aux.put(_Job(fid, lambda: handler(entry, params), delay, self.reply))
        elif method == "generate":
            entry = self.entry(model_id)
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
            draft = self.models.get(entry.draft_id) if entry.draft_id else None
            self.scheduler.submit(GenerateJob(out, entry, params, delay, draft, self.prompt_cache,
                                              self.group))

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

    # -- models -------------------------------------------------------------------------
    def entry(self, model_id: str) -> ModelEntry:
        entry = self.models.get(model_id)
        if entry is None:
            raise UnknownModel(f"model {model_id!r} is not loaded (resident: {sorted(self.models)})")
        return entry

    def load_model(self, model_id: str, params: dict) -> dict:
        from mlx.utils import tree_flatten

        from ..models import load, resolve_model

        if model_id in self.models:
            e = self.models[model_id]
            if params.get("draft"):
                self._attach_draft(e, params["draft"])
            return {"model": model_id, "cached": True, "bytes": e.bytes, "load_ms": 0.0,
                    "draft": e.draft_id}
        if self.group is not None and params.get("draft"):
            raise BadRequest("load_model: a distributed worker takes no draft model")
        t0 = time.perf_counter()
        path = resolve_model(model_id)
        if self.group is None:
            model, tokenizer = load(path, trust_remote_code=params.get("trust_remote_code", False))
        else:
            model, tokenizer = self._load_sharded(model_id, path,
                                                  params.get("trust_remote_code", False))
        nbytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
        vocab = sorted(tokenizer.get_vocab().items()) if hasattr(tokenizer, "get_vocab") else []
        entry = ModelEntry(model_id, model, tokenizer, str(path), nbytes,
                           (time.perf_counter() - t0) * 1e3,
                           vocab_hash=hashlib.sha1(repr(vocab).encode()).hexdigest(),
                           limits=gen.PromptLimits.of(model, tokenizer, self.max_prompt_tokens))
        self.models[model_id] = entry
        if params.get("draft"):
            self._attach_draft(entry, params["draft"])
        return {"model": model_id, "cached": False, "bytes": nbytes, "load_ms": entry.load_ms,
                "path": str(path), "draft": entry.draft_id}

    def _load_sharded(self, model_id: str, path, trust_remote_code: bool = False):
        """Every rank loads its shard of the model (tensor parallel); if any rank fails,
        all drop it and the call fails naming how many ranks could not load it."""
        from ..models import load_sharded

        self.group.command("load", model=model_id, trust_remote_code=trust_remote_code)
        try:
            model, tokenizer = load_sharded(path, self.group.group, self.group.backend,
                                            trust_remote_code=trust_remote_code)
        except Exception:
            self.group.all_ok(False)
            raise
        failed = self.group.all_ok(True)
        if failed:
            raise ModelError(f"load_model: {failed} of {self.group.size} ranks could not load "
                             f"{model_id!r} (see their stderr)")
        return model, tokenizer

    def _attach_draft(self, entry: ModelEntry, draft_id: str) -> None:
        """Load the draft (if needed), check it shares the target's vocabulary, attach it."""
        if draft_id not in self.models:
            self.load_model(draft_id, {})
        report = self._draft_report(entry, draft_id)
        if not report["compatible"]:
            raise BadRequest(f"load_model: draft {draft_id!r} is not compatible with "
                             f"{entry.id!r}: {report['reason']}")
        entry.draft_id = draft_id

    def unload_model(self, model_id: str) -> dict:
        import mlx.core as mx

        entry = self.entry(model_id)
        if model_id == NULL_MODEL:
            raise BadRequest("unload_model: the null model can't be unloaded")
        if entry.refs:  # possible with continuous batching: requests are in the batch
            raise BadRequest(f"unload_model: {model_id!r} has {entry.refs} requests in flight")
        del self.models[model_id]
        entry.unloaded = True
        if self.group is not None:
            self.group.command("unload", model=model_id)
        if self.prompt_cache is not None:
            self.prompt_cache.clear()
        entry.model = entry.tokenizer = None
        mx.clear_cache()
        return {"model": model_id, "freed_bytes": entry.bytes}

    def list_models(self) -> list[dict]:
        return [{"model": e.id, "bytes": e.bytes, "path": e.path, "load_ms": e.load_ms,
                 "in_flight": e.refs} for e in list(self.models.values()) if e.id != NULL_MODEL]

    def stats(self) -> dict:
        import resource

        return {**self.counters, "active_streams": len(self.streams), "pid": os.getpid(),
                "models": len(self.models) - 1,
                "resident_bytes": sum(e.bytes for e in list(self.models.values())),
                "rss_max_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "injected": dict(self.faults.injected), "scheduler": self.scheduler.name,
                "scheduler_counts": {k: getattr(self.scheduler, k) for k in
                                     ("steps", "prefills", "solo_runs", "handoffs") if hasattr(self.scheduler, k)},
                "prompt_cache": dict(self.prompt_cache.stats) if self.prompt_cache else None,
                "group": dict(self.group.stats) if self.group else None}

    # -- tokenizer methods (aux thread) ---------------------------------------------------
    @staticmethod
    def _hf(entry: ModelEntry):
        if entry.unloaded:
            raise UnknownModel(f"model {entry.id!r} was unloaded")
        if entry.tokenizer is None:
            raise BadRequest(f"model {entry.id!r} has no tokenizer")
        return getattr(entry.tokenizer, "_tokenizer", entry.tokenizer)

    def do_tokenize(self, entry, params) -> list[int]:
        return self._hf(entry).encode(params["text"], add_special_tokens=params.get("add_special_tokens", False))

    def do_batch_tokenize(self, entry, params) -> list[list[int]]:
        texts = params["texts"]  # checked at dispatch (krmlx.validate.check_texts)
        if not texts:
            return []
        # One call into the fast tokenizer's batch encoder (Rust, parallel), not a loop.
        return self._hf(entry)(texts, add_special_tokens=params.get("add_special_tokens", False))["input_ids"]

    def do_detokenize(self, entry, params) -> str:
        return self._hf(entry).decode(params["ids"])  # checked at dispatch

    def _draft_report(self, target: ModelEntry, draft_id: str) -> dict:
        draft = self.models.get(draft_id)
        if draft is None:
            return {"draft": draft_id, "compatible": False, "reason": "draft model not loaded"}
        same = draft.vocab_hash == target.vocab_hash and draft.vocab_hash != ""
        return {"draft": draft_id, "compatible": same,
                "reason": "same vocabulary" if same else "vocabularies differ"}

    def do_check_draft(self, entry, params) -> dict:
        return self._draft_report(entry, params["draft"])

    def do_batch_check_draft(self, entry, params) -> list[dict]:
        drafts = params["drafts"]
        if not all(isinstance(d, str) for d in drafts):
            raise BadRequest("batch_check_draft: drafts must all be strings")
        return [self._draft_report(entry, d) for d in drafts]


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
    import mlx.core as mx

    from .group import Leader, follow
    from .launch import DOORBELLS_ENV, GROUP_FOLDER_ENV

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
        from ..models import load_sharded, resolve_model

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
    import argparse

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
