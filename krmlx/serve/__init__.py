"""krmlx serve: an OpenAI-compatible HTTP front (Starlette on uvicorn) over one Engine.

    python -m krmlx serve --model tiny --scheduler batched --port 8000

- :mod:`.app`: :func:`make_app` (routes, SSE, errors, in-flight bound, lifespan);
- :mod:`.intake`: what a request passes before it takes a slot (Content-Type, the body
  bounded in size and time, limits, the prompt rendered and tokenized in the front);
- :mod:`.server`: uvicorn with a header timeout and the graceful stop;
- :mod:`.openai_api`: request bodies -> krmlx Requests, response and chunk bodies, errors;
- :mod:`.generation`: one request's engine stream -> text pieces, stop sequences, usage,
  timings;
- :mod:`.metrics`: Prometheus metrics; :mod:`.middleware`: access log, API key;
- :mod:`.process`: :class:`ServerProcess`, a managed server for tests, notebooks, bench
  (a served request timed from the client's side is the bench's ``http://`` target).

Nothing here imports MLX or holds stage logic: the engine below does all of that.
"""

from .app import make_app
from .process import ServerProcess
from .settings import ServeSettings

__all__ = ["ServeSettings", "ServerProcess", "make_app"]
