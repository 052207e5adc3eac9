"""Versioned results files: one JSON document per run, written atomically.

Top-level keys: ``schema`` ({"name": "krmlx.results", "version": N}), ``env`` (the
doctor's output plus the question-set hash and model details), ``config`` (what ran),
``records`` (one per request per trial, each naming its configuration in ``target``)
and ``summary`` (tables; comparisons carry ``ci_low`` / ``ci_high``). A run that is
interrupted still leaves a readable file, marked ``"complete": false``.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import tempfile
from pathlib import Path

import pandas as pd

from ..errors import ResultsError
from .metrics import to_frame

SCHEMA = {"name": "krmlx.results", "version": 5}
# 1: engine configs as StackConfig fields; 2: engine configs as {layers, worker, label};
# 3: targets (config["targets"]: name -> info), records name their target in ``engine``
# and carry ``output_text``; 4: ratios named for their direction (RENAMED_V4); 5: the
# column ``engine`` is ``target`` everywhere (records, measurements, summary tables) and
# the summary's per-target table is ``targets`` (was ``engines``).
# Records keep their meaning across versions: all are read, older documents upgraded.
READABLE_VERSIONS = (1, 2, 3, 4, 5)
# summary key -> {old column: new}: a ratio's name says which way it reads (row over base)
RENAMED_V4 = {"ratios": {f"{old}{end}": f"{new}{end}" for old, new in (
    ("throughput_ratio", "tok_s_target_over_base"), ("ttft_p50_ratio", "ttft_p50_target_over_base"))
    for end in ("", "_ci_low", "_ci_high")}}
REQUIRED = ("schema", "env", "config", "records", "summary")


def _clean(obj):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, DataFrames -> records."""
    if isinstance(obj, pd.DataFrame):
        return [_clean(r) for r in obj.to_dict(orient="records")]
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_results(path: str | os.PathLike, *, env: dict, config: dict, records: list[dict],
                  summary: dict, complete: bool = True) -> Path:
    """Write a results file atomically (temp file + rename): readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = _clean({"schema": SCHEMA, "complete": complete, "env": env, "config": config,
                  "records": records, "summary": summary})
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; a results file is for sharing
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_results(path: str | os.PathLike) -> dict:
    """A results file (``.json``, or gzip-compressed ``.json.gz``), checked and upgraded;
    ResultsError naming what is wrong otherwise."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        doc = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such results file") from None
    except (ValueError, EOFError, gzip.BadGzipFile) as e:
        raise ResultsError(f"{path}: not valid JSON, perhaps truncated ({e})") from None
    except OSError as e:
        raise ResultsError(f"{path}: can't be read ({e.strerror or e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("schema"), dict):
        raise ResultsError(f"{path}: not a krmlx results file (no schema)")
    schema = doc["schema"]
    if schema.get("name") != SCHEMA["name"]:
        raise ResultsError(f"{path}: schema {schema.get('name')!r} is not {SCHEMA['name']!r}")
    if schema.get("version") not in READABLE_VERSIONS:
        raise ResultsError(f"{path}: schema version {schema.get('version')} is not supported "
                           f"(this krmlx reads versions {READABLE_VERSIONS})")
    missing = [k for k in REQUIRED if k not in doc]
    if missing:
        raise ResultsError(f"{path}: missing keys {missing}")
    for key, kind in (("env", dict), ("config", dict), ("summary", dict), ("records", list)):
        if not isinstance(doc[key], kind):
            raise ResultsError(f"{path}: {key!r} must be {'a map' if kind is dict else 'a list'}, "
                               f"got {type(doc[key]).__name__}")
    bad = next((i for i, r in enumerate(doc["records"]) if not isinstance(r, dict)), None)
    if bad is not None:
        raise ResultsError(f"{path}: records[{bad}] is not a map")
    return upgrade(doc)


def upgrade(doc: dict) -> dict:
    """A document of an older schema with its records and summary under today's names."""
    version = doc["schema"].get("version", SCHEMA["version"])
    if version < 4:
        for key, names in RENAMED_V4.items():
            rows = doc["summary"].get(key)
            if isinstance(rows, list):
                doc["summary"][key] = [{names.get(k, k): v for k, v in r.items()}
                                       if isinstance(r, dict) else r for r in rows]
    if version < 5:
        doc["records"] = _renamed_v5(doc["records"])
        if isinstance(doc["config"].get("measurements"), list):
            doc["config"]["measurements"] = _renamed_v5(doc["config"]["measurements"])
        summary = doc["summary"]
        if "engines" in summary and "targets" not in summary:
            summary["targets"] = summary.pop("engines")
        for key, rows in summary.items():
            if isinstance(rows, list):
                summary[key] = _renamed_v5(rows)
    return doc


def _renamed_v5(rows: list) -> list:
    """Rows of a version < 5 document: ``engine`` -> ``target``, ``*_engine_over_base*`` ->
    ``*_target_over_base*``."""
    def name(k: str) -> str:
        return "target" if k == "engine" else k.replace("_engine_over_base", "_target_over_base")
    return [{name(k): v for k, v in r.items()} if isinstance(r, dict) else r for r in rows]


def export_csv(doc: dict, out_dir: str | os.PathLike, stem: str = "results") -> list[Path]:
    """records.csv plus one CSV per summary table; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    recs = to_frame(doc)
    if len(recs):
        recs = recs.drop(columns=[c for c in ("output_ids", "itl_ms", "stage_stats") if c in recs])
    p = out / f"{stem}_records.csv"
    recs.to_csv(p, index=False)
    written.append(p)
    for name, table in doc["summary"].items():
        if isinstance(table, list) and table and isinstance(table[0], dict):
            p = out / f"{stem}_{name}.csv"
            pd.DataFrame(table).to_csv(p, index=False)
            written.append(p)
    return written
