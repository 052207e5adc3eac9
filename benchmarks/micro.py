"""Served-path microbenchmarks: ping RTT, per-token stream cost per codec, tokenize paths.

    .venv/bin/python benchmarks/micro.py [--model tiny] [--smoke] [--out runs/micro.json]

Runs under the same BLAS environment as the CLI (re-executes itself with OpenBLAS
preloaded when available).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from krmlx.blas import blas_env  # noqa: E402

if __name__ == "__main__":
    env = blas_env()
    if env.get("LD_PRELOAD", "") != os.environ.get("LD_PRELOAD", "") and not os.environ.get("KRMLX_REEXECED"):
        env["KRMLX_REEXECED"] = "1"
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    from krmlx.bench.micro import main

    main()
