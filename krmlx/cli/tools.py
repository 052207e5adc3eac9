"""krmlx doctor and krmlx models."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..doctor import collect_env, format_env
from ..errors import ModelError
from ..models import PRESETS, cache_dir, make_gguf_model, make_model, model_bytes, resolve_model
from ..real_models import REAL_MODELS, VARIANTS, default_variant


def cmd_doctor(args) -> int:
    env = collect_env(load_interval_s=0.5)
    print(json.dumps(env, indent=2) if args.json else format_env(env))
    return 0



def cmd_models(args) -> int:
    if args.action == "list":
        for name, p in PRESETS.items():
            print(f"{name:14} {p.description}")
        for name, r in REAL_MODELS.items():
            print(f"{name:14} {r.description}; -{', -'.join(VARIANTS)} "
                  f"(default here: -{default_variant()})")
        built = sorted(d.name for d in cache_dir().glob("*") if d.is_dir() and not d.name.startswith("."))
        print(f"built in {cache_dir()}: {', '.join(built) or 'none'}")
        return 0
    t0 = time.perf_counter()
    try:
        if args.rebuild and not args.preset.lower().endswith(".gguf"):
            path = make_model(args.preset, rebuild=True)
        elif args.rebuild:
            path = make_gguf_model(Path(args.preset), rebuild=True)
        else:
            path = resolve_model(args.preset)
    except ModelError as e:
        print(f"models make: {e}", file=sys.stderr)
        return 1
    print(f"{args.preset}: {path} ({model_bytes(path) / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s)")
    return 0
