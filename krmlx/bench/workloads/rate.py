"""``goodput``: open-loop Poisson arrivals of generation requests at each of ``rates``
(requests/s), ``requests`` per rate, one target at a time (the order rotated per trial):
throughput and latency under a given load, and *goodput*: the share (and the rate) of
requests that met the SLO, TTFT <= ``ttft_slo_ms`` and TPOT <= ``tpot_slo_ms`` (as in
vLLM's bench and DistServe). The arrival times are seeded: every target gets the same ones.

Default targets: ``engine`` (continuous batching) and ``mlx_lm.server``; any others with
``--target``. (``direct`` runs one request at a time in this process and blocks the event
loop while it generates, so it can't take open-loop arrivals: it is refused here.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ...errors import ConfigError
from ...questions import load_questions
from ...stack import StackConfig
from ...types import Request
from .. import metrics
from ..targets import DirectTarget, EngineTarget, MlxLmServer, NotSupported
from .base import Workload, check_positive


@dataclass(frozen=True)
class Goodput(Workload):
    name = "goodput"
    SMOKE = {"rates": (2.0,), "requests": 6, "max_tokens": 8}

    rates: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    requests: int = 40
    max_tokens: int = 32
    ttft_slo_ms: float = 1000.0
    tpot_slo_ms: float = 100.0

    def validate(self, model):
        if not self.rates or not all(isinstance(r, (int, float)) and r > 0 for r in self.rates):
            raise ConfigError(f"{self.name}: rates must be positive numbers, got {self.rates!r}")
        check_positive(self.name, requests=self.requests, max_tokens=self.max_tokens,
                       ttft_slo_ms=self.ttft_slo_ms, tpot_slo_ms=self.tpot_slo_ms)

    def default_targets(self, phases, model):
        return [EngineTarget(StackConfig.phases(scheduler="batched"), "engine"),
                MlxLmServer(None, "mlx_lm.server")]

    def adapt(self, target):
        if isinstance(target, DirectTarget):
            raise NotSupported("direct generates inline, blocking the event loop: it can't "
                               "take open-loop arrivals")
        return super().adapt(target)

    def planned_records(self, n_targets):
        return self.requests * len(self.rates) * n_targets

    def schedule(self, rate: float) -> list[tuple[float, str, Request]]:
        rng = random.Random(self.seed)
        qs = [q.question for q in load_questions()[0]]
        t, out = 0.0, []
        for i in range(self.requests):
            t += rng.expovariate(rate)
            out.append((t, "generate", Request(qs[rng.randrange(len(qs))], max_tokens=self.max_tokens,
                                               id=f"r{rate:g}-{i:04d}")))
        return out

    async def run(self, run, group=0):
        sample = [r for _, _, r in self.schedule(max(self.rates))]
        await run.warm([("generate", r) for r in run.shapes(sample)], label="every prompt length once",
                       concurrency=4)

        async def body(trial):
            for rate in self.rates:
                await run.arrivals(self.schedule(rate), trial, series=f"rate={rate:g}", rate=rate)

        await run.trials(body)

    def summarize(self, records, config):
        df = metrics.to_frame(records)
        walls = {(m["target"], m["rate"], m["trial"]): m["wall_s"]
                 for m in config.get("measurements", []) if "rate" in m}
        rows = []
        for (engine, rate), part in df.groupby(["target", "rate"], sort=True):
            g = metrics.goodput(part, ttft_ms=self.ttft_slo_ms, tpot_ms=self.tpot_slo_ms)
            wall = sum(walls.get((engine, rate, t), 0.0) for t in part["trial"].unique())
            ok = part[part["ok"]]
            pct = metrics.percentiles
            rows.append({"target": engine, "rate": rate, "requests": len(part),
                         "errors": int((~part["ok"]).sum()),
                         "throughput_req_s": len(ok) / wall if wall else None,
                         "output_tok_s": ok["output_tokens"].sum() / wall if wall else None,
                         **{f"ttft_ms_{k}": v for k, v in pct(ok["ttft_ms"]).items()},
                         **{f"tpot_ms_{k}": v for k, v in pct(ok["tpot_ms"]).items()},
                         "goodput_fraction": g["fraction"], "goodput_req_s": g["good"] / wall
                         if wall else None, "lag_ms_max": float(part["lag_ms"].max())})
        return {"rates": rows, "slo": {"ttft_ms": self.ttft_slo_ms, "tpot_ms": self.tpot_slo_ms}}
