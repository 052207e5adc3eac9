"""The workloads, found by name (one module per family), run by :mod:`krmlx.bench.runner`::

    import asyncio
    from krmlx.bench import make_workload, run_workload

    wl = make_workload("lengths", smoke=True)          # ConfigError for bad parameters
    doc = asyncio.run(run_workload(wl, "tiny", targets=["direct", "engine", "mlx_lm.server"]))

=================  ======================================================  ==================
name               what (module)                                           default targets
=================  ======================================================  ==================
baseline           the 50 questions, one at a time (sequential)            direct + phase0 + all
lengths            prompts of ~16 to 2048 tokens, one at a time (lengths)  direct + phase0 + all
chat               multi-turn chats sharing a system prompt (chat)         phase0 + prompt cache
concurrency        waves of c requests, c = 1..64 (concurrency)            engine, raw, server
goodput            Poisson arrivals at rates, goodput under an SLO (rate)  batched engine + server
tokenize_flood     N tokenize calls, C in flight (load)                    direct + phase0 + batching
model_switching    each request on the next of 5 variants (sequential)     phase0 + caching
multi_tenant       the questions round robin over 5 variants (sequential)  phase0 + caching
mixed              generate / tokenize / switch, C in flight (load)        phase0 + all
error_rates        transient faults at several rates (error_rates)         phase0 + retry
long_form          a few 1000-token generations (long_form)                direct + phase0 + framing
server_profile     Poisson tokenize:generate 20:1 (load)                   phase0 + all
rate_sweep         server_profile at several rates (load)                  phase0 + all
micro              ping, per-token stream cost, tokenize, HTTP client      (its own variants)
                   calibration (micro)
prompt_cache       a shared long system prompt, KV reuse on/off (beyond)   phase0 + prompt cache
speculative        draft models, acceptance and decode rate (beyond)       phase0 + drafts
distributed        1 rank vs N ranks, each alone (distributed)             rank1 + ranksN
=================  ======================================================  ==================

``bench suite`` runs the nine workloads the reference's estimates name (baseline ...
rate_sweep). Every workload takes ``seed`` (request order, arrivals, fault draws).
"""

from __future__ import annotations

from ...errors import ConfigError
from ..estimates import estimate_tables, rows_of
from .base import BASE, DIRECT, Workload, phase_configs
from .beyond import PromptCache, Speculative
from .chat import Chat
from .concurrency import Concurrency
from .distributed import Distributed
from .error_rates import ErrorRates
from .lengths import Lengths
from .load import Mixed, RateSweep, ServerProfile, TokenizeFlood
from .long_form import LongForm
from .micro import Micro
from .rate import Goodput
from .sequential import Baseline, ModelSwitching, MultiTenant

WORKLOADS: dict[str, type[Workload]] = {cls.name: cls for cls in (
    Baseline, TokenizeFlood, ModelSwitching, MultiTenant, Mixed, ErrorRates, LongForm,
    ServerProfile, RateSweep, Lengths, Chat, Concurrency, Goodput, Micro, PromptCache,
    Speculative, Distributed)}
# ``bench suite``: the workloads the reference's estimates name, in order
SUITE = ("baseline", "tokenize_flood", "model_switching", "multi_tenant", "mixed",
         "error_rates", "long_form", "server_profile", "rate_sweep")

__all__ = ["BASE", "DIRECT", "SUITE", "WORKLOADS", "Workload", "estimate_tables",
           "make_workload", "phase_configs", "rows_of"]


def make_workload(name: str, *, smoke: bool = False, **params) -> Workload:
    """The workload called ``name`` with ``params`` (smoke sizes fill in the rest)."""
    cls = WORKLOADS.get(name)
    if cls is None:
        raise ConfigError(f"unknown workload {name!r}; workloads: {', '.join(WORKLOADS)} (or suite)")
    return cls.make(smoke=smoke, **params)
