"""krmlx: a lab bench for LLM serving-layer overhead on MLX.

The same questions go through :class:`DirectEngine` (mlx-lm in this process) and
:class:`Engine` (a worker process behind switchable serving stages configured by
:class:`StackConfig`), and every number comes from a run.
"""

from .direct import DirectEngine
from .errors import KrmlxError
from .models import make_model, resolve_model
from .questions import load_questions
from .service import Call
from .types import Chunk, Completion, Request

__all__ = [
    "Call",
    "Chunk",
    "Completion",
    "DirectEngine",
    "KrmlxError",
    "Request",
    "load_questions",
    "make_model",
    "resolve_model",
]
