"""``distributed``: the same questions through one worker process and through the worker
as an MLX distributed group of ``ranks`` (tensor parallel, :mod:`krmlx.worker.group`).

Targets (phase 0 engines): ``rank1`` (the plain worker), ``ranksN`` (krmlx's launcher: rank
0 holds the engine's pipes) and, with ``mlx_launch``, ``ranksN-mlx.launch`` (MLX's launcher,
which relays stdio). Each runs alone (its own group, started and stopped in turn), not
interleaved with the others: a group is never quite idle (under mlx.launch a follower
waits in a spinning collective and the relay spins; under krmlx's launcher followers wait
on a doorbell pipe, but spin between decode steps), so a live group would slow whatever
is measured beside it. After the questions each group runs
``group_probe``: the median cost of one all_sum of a scalar (a step flag, once per
token) and of a hidden-size vector (twice per layer per token), so the per-token cost of
the collectives can be set beside the measured TPOT difference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ...errors import ConfigError
from ...models import PRESETS, parse_name
from ...stack import StackConfig
from ...worker.launch import BACKENDS, DistributedConfig
from .. import metrics
from ..targets import EngineTarget
from .base import comparisons, outputs_match, target_tables
from .sequential import Baseline

BASE_RANK = "rank1"


@dataclass(frozen=True)
class Distributed(Baseline):
    name = "distributed"
    default_phases = "none"
    uses_direct = False
    SMOKE = {"questions": 3, "warmup": False, "max_tokens": 12, "probe_iters": 20}

    questions: int | None = 20
    max_tokens: int = 50
    ranks: int = 2
    backend: str = "ring"
    mlx_launch: bool = True
    probe_iters: int = 200

    def validate(self, model):
        super().validate(model)
        if isinstance(self.ranks, bool) or not isinstance(self.ranks, int) or self.ranks < 2:
            raise ConfigError(f"{self.name}: ranks must be an int >= 2, got {self.ranks!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"{self.name}: backend must be one of {BACKENDS}, got {self.backend!r}")
        spec = parse_name(model)
        if spec is not None:
            p = PRESETS[spec.preset]
            for what, n in (("attention heads", p.num_attention_heads),
                            ("key/value heads", p.num_key_value_heads),
                            ("intermediate size", p.intermediate_size)):
                if n % self.ranks:
                    raise ConfigError(f"{self.name}: {model!r} has {n} {what}, not divisible "
                                      f"by {self.ranks} ranks (tensor parallel splits them)")

    def default_targets(self, phases, model):
        n = self.ranks
        out = [EngineTarget(StackConfig(), BASE_RANK),
               EngineTarget(StackConfig.phases(distributed=DistributedConfig(n, self.backend)),
                            f"ranks{n}")]
        if self.mlx_launch:
            out.append(EngineTarget(StackConfig.phases(
                distributed=DistributedConfig(n, self.backend, "mlx.launch")), f"ranks{n}-mlx.launch"))
        return out

    def groups(self, targets):
        """Each target alone: a live group is never quite idle, it would slow the others."""
        return [(t.name, [t]) for t in targets]

    async def run(self, run, group=0):
        await super().run(run, group)
        for name, target in run.targets.items():
            if name == BASE_RANK:
                continue
            shape = _config(target.folder)
            probe = await run.probe(name, "group_probe", {
                "hidden": int(shape.get("hidden_size", 128)), "iters": self.probe_iters})
            stats = await run.probe(name, "stats") or {}
            if probe is not None:
                run.measurements.append({"series": "probe", "target": name, **probe,
                                         "layers": int(shape.get("num_hidden_layers", 0)),
                                         **(stats.get("group") or {})})

    def summarize(self, records, config):
        df = metrics.to_frame(records)
        others = [e for e in df["target"].unique() if e != BASE_RANK]
        probes = [m for m in config.get("measurements", []) if m.get("series") == "probe"]
        return {"targets": target_tables(df),
                "comparisons": comparisons(df, BASE_RANK, others, ("ttft_ms", "tpot_ms", "e2e_ms")),
                "outputs_match_rank1": outputs_match(df, BASE_RANK, others),
                "collectives": [collective_row(p) for p in probes]}


def collective_row(p: dict) -> dict:
    """A probe as a table row, with the per-token estimate: 2 all_sums of a hidden vector
    per layer (attention and MLP outputs) plus one step flag."""
    per_token = 2 * p.get("layers", 0) * p["allsum_hidden_us"] + p["allsum_scalar_us"]
    steps = p.get("steps") or 0
    return {"target": p["target"], "ranks": p["ranks"], "backend": p.get("backend"),
            "allsum_scalar_us": p["allsum_scalar_us"], "allsum_hidden_us": p["allsum_hidden_us"],
            "hidden": p["hidden"], "layers": p.get("layers"),
            "collectives_us_per_token": per_token,
            "step_flag_wait_us_mean": p.get("step_sync_s", 0.0) / steps * 1e6 if steps else None}


def _config(folder) -> dict:
    """The model folder's config.json ({} when it can't be read)."""
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return {}
