"""The worker's unary methods: one handler each, named in one table (:data:`HANDLERS`).

Contract: a handler ``(worker, params, model_id)`` runs on the read thread as the call
arrives. It checks what must be checked then and looks up what must be looked up then
(an aux method's model, a cancel's stream); what it raises is answered at once with an
error frame. It returns the *work*: a function of no arguments whose value is the reply,
run where ``METHODS[method].runs`` says: ``inline`` (at once, in the read loop), ``aux``
(the tokenizer thread) or ``compute`` (the MLX thread, through the scheduler, after the
jobs queued before it: a load or an unload looks its model up only then).

``generate`` (a stream) and ``shutdown`` (the end of the read loop) are the read loop's
own (:mod:`krmlx.worker.server`); every other method of
:data:`~krmlx.service.METHODS` has a handler here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from ..errors import BadRequest, NotFound, UnknownModel
from .registry import ModelEntry

Work = Callable[[], object]


def _hf(entry: ModelEntry):
    """The model's tokenizer (the fast one underneath, when wrapped), for the aux thread."""
    if entry.unloaded:
        raise UnknownModel(f"model {entry.id!r} was unloaded")
    if entry.tokenizer is None:
        raise BadRequest(f"model {entry.id!r} has no tokenizer")
    return getattr(entry.tokenizer, "_tokenizer", entry.tokenizer)


# -- inline (the read loop) ---------------------------------------------------------------

def ping(w, params, model_id) -> Work:
    return lambda: {"pid": os.getpid(), "t": time.time()}


def stats(w, params, model_id) -> Work:
    return w.stats


def list_models(w, params, model_id) -> Work:
    return w.registry.listing


def cancel(w, params, model_id) -> Work:
    target = params["target"]
    st = w.streams.get(target)
    if st is None:
        raise NotFound(f"cancel: no active stream with id {target}")
    st.cancel()
    return lambda: {"cancelled": target}


# -- compute (the MLX thread) -------------------------------------------------------------

def load_model(w, params, model_id) -> Work:
    return lambda: w.registry.load(model_id, params)


def unload_model(w, params, model_id) -> Work:
    return lambda: w.registry.unload(model_id)


def group_probe(w, params, model_id) -> Work:
    if w.group is None:
        raise BadRequest("group_probe: this worker is one process, not a distributed group")
    hidden, iters = params.get("hidden", 128), params.get("iters", 50)
    if not (0 < hidden <= 1 << 20 and 0 < iters <= 10_000):
        raise BadRequest("group_probe: hidden must be in [1, 2**20] and iters in [1, 10000]")
    return lambda: w.group.probe(hidden, iters)


# -- aux (the tokenizer thread) -----------------------------------------------------------

def tokenize(w, params, model_id) -> Work:
    entry = w.registry.entry(model_id)
    return lambda: _hf(entry).encode(params["text"],
                                     add_special_tokens=params.get("add_special_tokens", False))


def batch_tokenize(w, params, model_id) -> Work:
    entry = w.registry.entry(model_id)

    def work() -> list[list[int]]:
        texts = params["texts"]  # checked at dispatch (krmlx.validate.check_texts)
        if not texts:
            return []
        # One call into the fast tokenizer's batch encoder (Rust, parallel), not a loop.
        return _hf(entry)(texts, add_special_tokens=params.get("add_special_tokens", False))["input_ids"]

    return work


def detokenize(w, params, model_id) -> Work:
    entry = w.registry.entry(model_id)
    return lambda: _hf(entry).decode(params["ids"])  # checked at dispatch


def check_draft(w, params, model_id) -> Work:
    entry = w.registry.entry(model_id)
    return lambda: w.registry.draft_report(entry, params["draft"])


def batch_check_draft(w, params, model_id) -> Work:
    entry = w.registry.entry(model_id)

    def work() -> list[dict]:
        drafts = params["drafts"]
        if not all(isinstance(d, str) for d in drafts):
            raise BadRequest("batch_check_draft: drafts must all be strings")
        return [w.registry.draft_report(entry, d) for d in drafts]

    return work


HANDLERS: dict[str, Callable[..., Work]] = {
    "ping": ping,
    "stats": stats,
    "list_models": list_models,
    "cancel": cancel,
    "load_model": load_model,
    "unload_model": unload_model,
    "group_probe": group_probe,
    "tokenize": tokenize,
    "batch_tokenize": batch_tokenize,
    "detokenize": detokenize,
    "check_draft": check_draft,
    "batch_check_draft": batch_check_draft,
}
