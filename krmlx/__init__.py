"""krmlx: a lab bench for LLM serving-layer overhead on MLX.

The same requests go through :class:`DirectEngine` (mlx-lm in this process) and
:class:`Engine` (a worker process behind switchable serving stages configured by
:class:`StackConfig`), and every number comes from a run::

    from krmlx import DirectEngine, Engine, Request, StackConfig

    async with DirectEngine("mini") as direct, Engine("mini", StackConfig.all()) as served:
        a = await direct.complete(Request("Why is the sky blue?"))
        b = await served.complete(Request("Why is the sky blue?"))

Stage configs (the layers of a StackConfig) are in :mod:`krmlx.stages`; the worker's
settings are a :class:`WorkerConfig`; errors are in :mod:`krmlx.errors`.
"""

from .direct import DirectEngine
from .engine import Engine
from .errors import KrmlxError
from .models import make_model, resolve_model
from .questions import load_questions
from .stack import StackConfig
from .types import Chunk, Completion, Request
from .worker.config import WorkerConfig

__all__ = [
    "Chunk",
    "Completion",
    "DirectEngine",
    "Engine",
    "KrmlxError",
    "Request",
    "StackConfig",
    "WorkerConfig",
    "load_questions",
    "make_model",
    "resolve_model",
]
