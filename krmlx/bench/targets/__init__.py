"""Targets: the serving layers a benchmark measures, each reached the same way.

A target is the only thing that knows how to reach a serving layer; workloads and the runner
only ever call this interface::

    t = make_target("engine:all")          # or Target objects built in Python
    await t.start("mini")                  # load, spawn, health-check (idempotent)
    done = await t.generate(Request(...))  # a krmlx Completion, timed on the caller's side
    await t.stop()                         # always: processes killed and reaped

Operations beyond ``generate`` (``tokenize``, ``load`` a model, worker ``call``s, ``with_worker``
variants such as injected faults) raise :class:`NotSupported` where a target has none; the
runner records that once per workload, never a crash. ``run_wave(requests)`` sends requests
at once (the raw BatchGenerator target overrides it: it *is* a wave).

Spec strings (``--target`` on the CLI, :func:`make_target`), optionally ``NAME=SPEC``:

================================  =========================================================
``direct``                        DirectEngine: mlx-lm in this process (the baseline)
``raw``                           mlx-lm's BatchGenerator in this process (waves only)
``engine[:PHASES][?k=v&...]``     the stdio Engine; PHASES ``phase0`` (default) | ``all`` |
                                  a comma list; ``k=v``: WorkerConfig fields
                                  (``scheduler=batched``, ``prompt_cache=on``, ``draft=M``...)
``http://HOST:PORT/v1[?model=ID]`` any OpenAI-compatible endpoint already running
``mlx_lm.server[?k=v]``           mlx-lm's server, started here; ``k=v``: its flags
                                  (``decode_concurrency=32``)
``krmlx.serve[:PHASES][?k=v]``     krmlx's own server, started here (``?scheduler=serial``...)
``cmd:COMMAND``                   any server command line, with ``{port}``, ``{model}`` (the
                                  model folder) and ``{host}``; started and stopped here
``peer:NAME``                     a peer server in its own venv (:mod:`krmlx.bench.peers`)
================================  =========================================================

Layout: :mod:`.base` (the interface), :mod:`.spec` (the parser and the kind registry),
one module per kind: :mod:`.inprocess` (direct, raw), :mod:`.engine`, :mod:`.http`,
:mod:`.managed` (krmlx.serve, cmd:), :mod:`.peers` (mlx_lm.server, peer:NAME).
"""

from .base import NotSupported, Target, process_tree
from .engine import EngineTarget, engine_config
from .http import HttpTarget
from .inprocess import DirectTarget, RawBatchTarget
from .managed import CommandServer, KrmlxServe, ManagedServer
from .peers import MlxLmServer, PeerServer
from .spec import KINDS, make_target, parse_options

__all__ = ["KINDS", "CommandServer", "DirectTarget", "EngineTarget", "HttpTarget", "KrmlxServe",
           "ManagedServer", "MlxLmServer", "NotSupported", "PeerServer", "RawBatchTarget",
           "Target", "engine_config", "make_target", "parse_options", "process_tree"]
