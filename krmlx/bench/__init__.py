"""krmlx's bench: any serving layer (a target) against direct, on the same requests.

    import asyncio
    from krmlx.bench import make_workload, run_workload

    doc = asyncio.run(run_workload(make_workload("baseline", smoke=True), "tiny",
                                   targets=["direct", "engine", "engine:all", "mlx_lm.server"]))

Where things are: targets in :mod:`.targets` (one module per kind; peers' definitions in
:mod:`.peers`, the HTTP client in :mod:`.http`), the one
runner in :mod:`.runner`, each workload in :mod:`.workloads` by name, pure metrics in
:mod:`.metrics`, results files in :mod:`.results`, the reference's estimates in
:mod:`.estimates`, the timelines as OpenTelemetry spans in :mod:`.otel`.
"""

from .otel import export_otlp
from .runner import run_workload, summarize_partial
from .targets import NotSupported, Target, make_target
from .workloads import SUITE, WORKLOADS, make_workload

__all__ = ["SUITE", "WORKLOADS", "NotSupported", "Target", "export_otlp", "make_target",
           "make_workload", "run_workload", "summarize_partial"]
