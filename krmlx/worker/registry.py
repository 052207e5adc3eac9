"""The worker's resident models: :class:`ModelEntry` (one loaded model) and
:class:`ModelRegistry` (load, unload, draft models, lookup).

Contract: loads and unloads run on the compute thread (they are scheduler jobs, so they
queue between generations); lookups come from any thread. The null model (synthetic
tokens, no MLX) is always resident and can't be unloaded. A model loaded with a
``draft`` gets it attached only if both share one vocabulary (BadRequest otherwise). In
a distributed group every rank loads its shard (tensor parallel) and a load fails on
all ranks if one fails (:class:`~krmlx.errors.ModelError` says how many). An unload
refuses a model with requests in flight, marks its entry ``unloaded`` (jobs queued
before it then fail cleanly), empties the prompt cache and frees MLX's cache.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from .. import gen
from ..errors import BadRequest, ModelError, UnknownModel
from ..models import load, load_sharded, resolve_model
from .protocol import NULL_MODEL


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


class ModelRegistry:
    """The models a worker holds, by id. ``max_prompt_tokens``: each model's prompt limit
    (None: its context); ``group``: the worker's :class:`~krmlx.worker.group.Leader` when
    it is rank 0 of a group; ``prompt_cache``: its PromptCache, emptied on an unload."""

    def __init__(self, *, max_prompt_tokens: int | None = None, group=None, prompt_cache=None):
        self.max_prompt_tokens = max_prompt_tokens
        self.group = group
        self.prompt_cache = prompt_cache
        self.models: dict[str, ModelEntry] = {NULL_MODEL: ModelEntry(NULL_MODEL)}

    def entry(self, model_id: str) -> ModelEntry:
        entry = self.models.get(model_id)
        if entry is None:
            raise UnknownModel(f"model {model_id!r} is not loaded (resident: {sorted(self.models)})")
        return entry

    def draft_of(self, entry: ModelEntry) -> ModelEntry | None:
        return self.models.get(entry.draft_id) if entry.draft_id else None

    def load(self, model_id: str, params: dict) -> dict:
        from mlx.utils import tree_flatten  # MLX only in the worker, after its stdout moved

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
            self.load(draft_id, {})
        report = self.draft_report(entry, draft_id)
        if not report["compatible"]:
            raise BadRequest(f"load_model: draft {draft_id!r} is not compatible with "
                             f"{entry.id!r}: {report['reason']}")
        entry.draft_id = draft_id

    def draft_report(self, target: ModelEntry, draft_id: str) -> dict:
        """Whether ``draft_id`` (loaded) can draft for ``target``: the same vocabulary."""
        draft = self.models.get(draft_id)
        if draft is None:
            return {"draft": draft_id, "compatible": False, "reason": "draft model not loaded"}
        same = draft.vocab_hash == target.vocab_hash and draft.vocab_hash != ""
        return {"draft": draft_id, "compatible": same,
                "reason": "same vocabulary" if same else "vocabularies differ"}

    def unload(self, model_id: str) -> dict:
        import mlx.core as mx  # MLX only in the worker, after its stdout moved

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

    def listing(self) -> list[dict]:
        """The resident models (the null model left out), as ``list_models`` answers."""
        return [{"model": e.id, "bytes": e.bytes, "path": e.path, "load_ms": e.load_ms,
                 "in_flight": e.refs} for e in list(self.models.values()) if e.id != NULL_MODEL]

    def resident_bytes(self) -> int:
        return sum(e.bytes for e in list(self.models.values()))
