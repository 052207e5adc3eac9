"""Pool replications: several results files of one workload, run the same way on the same
machine, summarized as one run.

Each file's trials stay whole and distinct (trial numbers are offset file by file and every
record names the file it came from in ``pooled_from``), so a CI that resamples whole trials
(``lengths``' ``e2e_overhead_pct_trial_ci_*``) resamples across every replication. Pooling
refuses files that differ in what makes runs comparable: the workload, the model, the
sampling and sizes (``max_tokens``, ``per_length``...), or the machine (cores, BLAS and its
threads, mlx and mlx-lm versions, the model's bytes). Prompt lengths, seeds, trial counts,
targets and krmlx's git revision may differ; the pooled file lists each file's.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ResultsError
from .results import read_results

# env fields that must agree for runs to be replications of one another
SAME_ENV = ("machine", "cores", "cores_usable", "caller_blas_threads", "mlx", "mlx_lm",
            "device", "model", "model_bytes")
# workload params that may differ between replications (which prompts, how many)
FREE_PARAMS = ("seed", "lengths", "levels", "smoke")


def _env_key(env: dict) -> dict:
    key = {k: env.get(k) for k in SAME_ENV}
    blas = env.get("blas") or {}
    key["blas"] = (blas.get("kind"), blas.get("threads"))
    return key


def _params(cfg: dict) -> dict:
    """A file's workload parameters with the workload's defaults filled in (a file written
    before a parameter existed ran with its default), less the ones that may differ."""
    from dataclasses import MISSING, fields

    from .workloads import WORKLOADS

    cls = WORKLOADS.get(cfg.get("workload"))
    defaults = {f.name: f.default for f in fields(cls) if f.default is not MISSING} if cls else {}
    params = {**defaults, **(cfg.get("params") or {})}
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in params.items() if k not in FREE_PARAMS}


def _differences(a: dict, b: dict) -> list[str]:
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def pool_results(paths: list[str | Path]) -> dict:
    """One results document (``env``: the first file's, whose machine facts all share;
    ``config``; ``records``; no summary yet) from the replications in ``paths``. Raises
    :class:`ResultsError` naming the file and the field when they are not replications of
    one another."""
    if len(paths) < 2:
        raise ResultsError(f"pool: give two or more results files, got {len(paths)}")
    docs = [(str(p), read_results(p)) for p in paths]
    first_path, first = docs[0]
    cfg0, env0 = first["config"], first["env"]
    params0 = _params(cfg0)
    records, sources, lengths, offset = [], [], set(), 0
    for path, doc in docs:
        cfg, env = doc["config"], doc["env"]
        given = cfg.get("params") or {}
        if not doc.get("complete", True):
            raise ResultsError(f"pool: {path} is an interrupted run's partial file")
        if cfg.get("smoke"):
            raise ResultsError(f"pool: {path} is a smoke run (not evidence)")
        for field in ("workload", "model"):
            if cfg.get(field) != cfg0.get(field):
                raise ResultsError(f"pool: {path} has {field} {cfg.get(field)!r}, "
                                   f"{first_path} has {cfg0.get(field)!r}")
        if bad := _differences(_params(cfg), params0):
            raise ResultsError(f"pool: {path} and {first_path} differ in workload "
                               f"parameter(s) {bad}: not replications of one run")
        if bad := _differences(_env_key(env), _env_key(env0)):
            raise ResultsError(f"pool: {path} and {first_path} ran on different setups "
                               f"(env {bad}): not replications of one run")
        trials = sorted({r["trial"] for r in doc["records"] if r.get("trial") is not None})
        if not trials:
            raise ResultsError(f"pool: {path} has no trial records")
        for r in doc["records"]:
            trial = r.get("trial")
            records.append({**r, "trial": None if trial is None else trial + offset,
                            "pooled_from": path})
        lengths.update(given.get("lengths") or ())
        sources.append({"path": path, "trials": len(trials), "trial_offset": offset,
                        "records": len(doc["records"]), "git_sha": env.get("git_sha"),
                        "seed": given.get("seed"),
                        "targets": sorted(cfg.get("targets") or {}), "argv": env.get("argv"),
                        "treatment": cfg.get("treatment")})
        offset += trials[-1] + 1
    params = {k: v for k, v in (cfg0.get("params") or {}).items() if k != "seed"}
    if lengths:
        params["lengths"] = sorted(lengths)
    config = {"workload": cfg0["workload"], "model": cfg0.get("model"), "trials": offset,
              "smoke": False, "params": params, "pooled_from": sources,
              "targets": {k: v for _, d in docs
                          for k, v in (d["config"].get("targets") or {}).items()}}
    return {"env": env0, "config": config, "records": records}
