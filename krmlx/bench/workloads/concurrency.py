"""``concurrency``: for each level ``c``, through each target in turn, either a wave of
``c`` requests at once (``mode="waves"``, the default) or ``requests`` requests with ``c``
in flight, the next sent as one ends (``mode="closed"``: the closed loop of GuideLLM's and
vLLM's ``concurrent`` profiles): aggregate throughput, TTFT and TPOT under load.

Default targets: ``engine`` (the stdio Engine, its default ``auto`` scheduler), ``raw`` (mlx-lm's
BatchGenerator in this process: the ceiling) and ``mlx_lm.server`` (mlx-lm's own HTTP
server, started here with ``--decode-concurrency 64``); any others with ``--target``
(``krmlx.serve``, ``http://...``, peers). Every target gets the same prompts (the 50
questions cycled, or ``prompts="long"``: prefill-heavy prompts of 100-200 tokens), the same
``max_tokens`` and, untimed before the trials, one wave at every level (each batch shape
once: GPU kernels compile per shape, a server's first batch allocates).
``prompts="synthetic"``: fresh prompts of ``prompt_tokens`` tokens (chat template included)
per trial, as a load generator's synthetic data.

The summary: one row per (target, level) with aggregate tok/s (output tokens / the wave's
wall time; a CI over trials when there are several), TTFT p50/p90, TPOT p50, E2E p50; and
the ratios of each target to the first (throughput, TTFT p50) per level, each with a 95%
CI that resamples whole trials (from 10 trials: a wave's first tokens come in plateaus, one
per prefill group, so one trial's p50 jumps with how its arrivals split into groups).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ...errors import ConfigError
from ...questions import load_questions
from ...stack import StackConfig
from ...types import Request
from .. import metrics
from ..targets import EngineTarget, MlxLmServer, RawBatchTarget
from .base import Workload, check_positive, outputs_match

PROMPT_SETS = ("questions", "long", "synthetic")
MODES = ("waves", "closed")


@dataclass(frozen=True)
class Concurrency(Workload):
    name = "concurrency"
    SMOKE = {"levels": (1, 4), "max_tokens": 16}

    levels: tuple[int, ...] = (1, 4, 16, 64)
    max_tokens: int = 64
    prompts: str = "questions"
    mode: str = "waves"
    requests: int = 20  # closed mode: requests per level and trial
    prompt_tokens: int = 64  # synthetic prompts

    def validate(self, model):
        if not self.levels or not all(isinstance(c, int) and c >= 1 for c in self.levels):
            raise ConfigError(f"{self.name}: levels must be positive ints, got {self.levels!r}")
        if self.prompts not in PROMPT_SETS:
            raise ConfigError(f"{self.name}: prompts must be one of {PROMPT_SETS}, got {self.prompts!r}")
        if self.mode not in MODES:
            raise ConfigError(f"{self.name}: mode must be one of {MODES}, got {self.mode!r}")
        check_positive(self.name, max_tokens=self.max_tokens, requests=self.requests,
                       prompt_tokens=self.prompt_tokens)

    def default_targets(self, phases, model):
        return [EngineTarget(StackConfig(), "engine"), RawBatchTarget(),
                MlxLmServer(None, "mlx_lm.server")]

    def planned_records(self, n_targets):
        per = len(set(self.levels)) * self.requests if self.mode == "closed" else sum(set(self.levels))
        return per * n_targets

    def pool(self, run, trial: int = 0) -> list[Request]:
        """The prompts of a trial (``long``: fresh ones per trial, and others for the warm-up,
        trial -1, so no target sees a timed prompt twice)."""
        if self.prompts == "long":
            from ..prompts import long_prompts

            return long_prompts(run.tokenizer(), 20, max_tokens=self.max_tokens,
                                seed=self.seed * 1000 + 100 * (trial + 1))
        if self.prompts == "synthetic":
            from ..prompts import prompt_of_length

            n = max(self.requests, max(self.levels)) if self.mode == "closed" else 20
            base = self.seed * 100_000 + (trial + 1) * 1000
            return [Request(prompt_of_length(run.tokenizer(), self.prompt_tokens, seed=base + i),
                            max_tokens=self.max_tokens, id=f"syn-{i}") for i in range(n)]
        return [Request(q.question, max_tokens=self.max_tokens, id=q.id) for q in load_questions()[0]]

    @staticmethod
    def wave_of(pool: list[Request], c: int, max_tokens: int | None = None) -> list[Request]:
        return [replace(pool[i % len(pool)], id=f"c{c}-{i:03d}",
                        **({"max_tokens": max_tokens} if max_tokens else {})) for i in range(c)]

    async def run(self, run, group=0):
        from ...doctor import memory_bandwidth_gbs
        from ...models import model_bytes, resolve_model

        # the hardware floor: a decode step streams every weight once (measured here, on the
        # caller's device, which on one host is the targets' too)
        run.config["hardware_floor"] = {"weight_bytes": model_bytes(resolve_model(run.model)),
                                        "bandwidth_gbs": memory_bandwidth_gbs()}
        levels = sorted(set(self.levels))
        warm = self.pool(run, -1)
        for c in levels:  # every batch shape once, untimed, on every target
            await run.warm([("generate", r) for r in self.wave_of(warm, c, 4)],
                           label=f"a wave of {c}", concurrency=c)

        async def body(trial):
            pool = self.pool(run, trial)
            for c in levels:
                if self.mode == "closed":
                    reqs = [replace(pool[i % len(pool)], id=f"c{c}-{i:03d}")
                            for i in range(self.requests)]
                    await run.batch([("generate", r) for r in reqs], trial, series=f"c={c}",
                                    concurrency=c, level=c)
                else:
                    await run.wave(self.wave_of(pool, c), trial, series=f"c={c}", level=c)

        await run.trials(body)

    def summarize(self, records, config):
        df = metrics.to_frame(records)
        rows = level_rows(df, config)
        present = {r["target"] for r in rows}
        names = [n for n in config.get("targets", {}) if n in present]  # in the order given
        return {"levels": rows, "ratios": ratio_rows(rows, names[0], df, config) if names else [],
                "outputs_match": outputs_match(df, names[0], names[1:]) if names else []}


def level_rows(df, config: dict) -> list[dict]:
    """Per (target, level): aggregate tok/s over the wave's wall time, latency percentiles."""
    walls = {}
    for m in config.get("measurements", []):
        if "level" in m:
            walls.setdefault((m["target"], m["level"]), []).append(m)
    rows = []
    for (engine, level), ms in sorted(walls.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        part = df[(df["target"] == engine) & (df["level"] == level)]
        ok = part[part["ok"]]
        tps = list(trial_tps(ok, ms).values())
        ci = metrics.mean_ci(tps)
        pct = metrics.percentiles
        rows.append({"target": engine, "concurrency": level, "requests": len(part),
                     "errors": int((~part["ok"]).sum()),
                     # HTTP: connections that failed unanswered and were sent again
                     "connect_retries": int(part["connect_retries"].fillna(0).sum())
                     if "connect_retries" in part else 0,
                     "aggregate_tps": float(np.mean(tps)) if tps else math.nan,
                     "aggregate_tps_ci_low": ci["ci_low"], "aggregate_tps_ci_high": ci["ci_high"],
                     **{f"ttft_ms_{k}": v for k, v in pct(ok["ttft_ms"], (50, 90)).items()},
                     "tpot_ms_p50": pct(ok["tpot_ms"], (50,))["p50"],
                     "e2e_ms_p50": pct(ok["e2e_ms"], (50,))["p50"],
                     "caller_cpu_s": float(np.mean([m["caller_cpu_s"] for m in ms])),
                     "target_cpu_s": float(np.mean([m["target_cpu_s"] for m in ms])),
                     **floor_of(config.get("hardware_floor"), level, float(np.mean(tps)) if tps else math.nan)})
    return rows


def floor_of(floor: dict | None, level: int, tps: float) -> dict:
    """The weight-streaming ceiling at ``level`` streams (each decode step reads every weight
    once: at most level x bandwidth / weight bytes tokens per second) and the fraction of it
    the level reached (output tokens over the wave's wall time, prefill included, so a
    lower bound on the decode's own fraction). On a CPU a model small enough to stay in the
    caches is not bound by memory bandwidth, and can pass 1."""
    if not floor or not floor.get("weight_bytes") or not floor.get("bandwidth_gbs"):
        return {}
    ceiling = level * floor["bandwidth_gbs"] * 1e9 / floor["weight_bytes"]
    return {"floor_tok_s": ceiling, "floor_fraction": tps / ceiling}


def trial_tps(ok, ms) -> dict:
    """trial -> aggregate tok/s of one wave: its completed requests' output tokens over the
    wave's wall time (``ms``: the wave's measurements, one per trial)."""
    return {m["trial"]: ok[ok["trial"] == m["trial"]]["output_tokens"].sum() / m["wall_s"]
            for m in ms if m["wall_s"]}


def ratio_rows(rows: list[dict], base: str, df=None, config: dict | None = None) -> list[dict]:
    """Each target against ``base`` per level, named for their direction: the row's
    ``target`` over its ``base``: ``tok_s_target_over_base`` (of mean tok/s over trials)
    and ``ttft_p50_target_over_base`` (of the p50s of all trials' requests), each with a 95% CI that
    resamples whole trials (:func:`metrics.trial_ratio_ci`; NaN below 10 trials)."""
    by = {(r["target"], r["concurrency"]): r for r in rows}
    out = []
    for r in rows:
        b = by.get((base, r["concurrency"]))
        if r["target"] == base or b is None:
            continue
        row = {"target": r["target"], "base": base, "concurrency": r["concurrency"],
               "tok_s_target_over_base": r["aggregate_tps"] / b["aggregate_tps"]
               if b["aggregate_tps"] else math.nan,
               "ttft_p50_target_over_base": r["ttft_ms_p50"] / b["ttft_ms_p50"]
               if b["ttft_ms_p50"] else math.nan}
        if df is not None and config is not None:
            row.update(trial_ratio_cis(df, config, base, r["target"], r["concurrency"]))
        out.append(row)
    return out


def trial_ratio_cis(df, config: dict, base: str, other: str, level: int) -> dict:
    """The CIs of :func:`ratio_rows`' two ratios, ``other`` over ``base`` at one level."""
    ms = [m for m in config.get("measurements", []) if m.get("level") == level]
    ok = df[df["ok"] & (df["level"] == level)]
    tps, ttft = {}, {}
    for name in (base, other):
        mine = ok[ok["target"] == name]
        tps[name] = {t: [v] for t, v in trial_tps(mine, [m for m in ms if m["target"] == name]).items()}
        ttft[name] = {t: g["ttft_ms"].dropna().values for t, g in mine.groupby("trial")}
    out = {"trials": 0}
    for key, values, stat in (("tok_s_target_over_base", tps, np.mean),
                              ("ttft_p50_target_over_base", ttft, np.median)):
        ci = metrics.trial_ratio_ci(values[base], values[other], stat)
        out["trials"] = ci["trials"]
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = ci["ratio_ci_low"], ci["ratio_ci_high"]
    return out
