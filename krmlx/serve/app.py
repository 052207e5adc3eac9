"""make_app: the OpenAI-compatible ASGI app (Starlette) over one engine.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (streaming as SSE through
sse-starlette, or one JSON body), ``GET /v1/models``, ``GET /health`` (never needs the API
key), ``GET /metrics`` (Prometheus text format, see :mod:`krmlx.serve.metrics`).

Contract:

- The engine (an :class:`~krmlx.engine.Engine`, or anything with its API: ``start``,
  ``close``, ``stream``) is started in the app's lifespan and closed at its end; every
  request shares it, so with the default ``scheduler="auto"`` (or ``batched``) concurrent
  clients share the worker's continuous batching.
- At most ``settings.max_in_flight`` generation requests are served at once, counted from
  the moment a request's body is read, checked and its prompt encoded
  (:mod:`krmlx.serve.intake`: nothing before that holds a slot); one more is answered 503
  at once, with ``Retry-After`` and an OpenAI-style body (never queued).
- Graceful stop (:meth:`ServeState.begin_stop`, called by :mod:`krmlx.serve.server` on
  SIGTERM): new generations get 503 ``server_shutting_down``; open ones may finish within
  ``graceful_timeout_s``, then streams end with that error event and ``[DONE]`` and
  non-streaming requests get the 503 (``krmlx_serve_shutdown_ended_total``).
- A bad request is a 4xx before anything is generated (:mod:`krmlx.serve.openai_api`).
  A stream is primed before its headers go out: an engine error before the first text is
  an HTTP error too (:func:`krmlx.serve.generation.api_error`: 400, 404, 502 for a worker
  crash, 503 with Retry-After for an open breaker, 504 for a timeout). After the first
  text, an error ends the stream with ``data: {"error": {...}}`` then ``data: [DONE]``
  (the openai SDK raises it as an APIError); the next request restarts a dead worker.
- A client that disconnects (mid-stream, or while its request waits for the first token
  or its whole completion) has its engine stream closed, which cancels the generation in
  the worker at its next decode step.
- Timings (:class:`~krmlx.serve.generation.Generation`): a ``timings`` object beside
  ``usage`` (non-streaming bodies and the final usage chunk), and ``X-Krmlx-*-Ms`` headers
  for what is known before the body (all of them when not streaming; queue and TTFT when
  streaming, as the stream is primed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import orjson
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import KrmlxError
from . import openai_api as api
from .generation import Generation, api_error
from .intake import ClientGone, PromptEncoder, read_body
from .metrics import CONTENT_TYPE, ServeMetrics, engine_status
from .middleware import AccessLog, ApiKeyAuth
from .settings import ServeSettings

log = logging.getLogger("krmlx.serve")
PING_S = 15  # SSE keep-alive comments while a stream is quiet


def _json(body: dict) -> str:
    return orjson.dumps(body).decode()


def _notes(request: HttpRequest) -> dict:
    return request.scope.setdefault("state", {}).setdefault("log", {})


async def _wait_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(request: HttpRequest, coro):
    """``await coro``, unless the client disconnects first: then it is cancelled and
    ClientGone raised."""
    task = asyncio.ensure_future(coro)
    watch = asyncio.ensure_future(_wait_disconnect(request.receive))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        watch.cancel()
    if task in done:
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise ClientGone


def timing_headers(timings: dict, keys=("queue_ms", "ttft_ms", "decode_ms", "e2e_ms",
                                        "tpot_ms")) -> dict:
    return {f"X-Krmlx-{k[:-3].capitalize()}-Ms": f"{timings[k]:.3f}" for k in keys
            if timings.get(k) is not None}


class _Stream(EventSourceResponse):
    """An SSE response that runs ``on_close`` however it ends (even if never iterated)."""

    def __init__(self, content, *, on_close, **kw):
        super().__init__(content, **kw)
        self._content, self._on_close = content, on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            with contextlib.suppress(Exception):
                await self._content.aclose()
            await self._on_close()


class ServerStopping(Exception):
    """The grace period after SIGTERM is over: the request is ended (503 / error event)."""


class ServeState:
    def __init__(self, engine, settings: ServeSettings):
        self.engine, self.settings = engine, settings
        self.metrics = ServeMetrics(engine)
        self.in_flight = 0
        self.prompts = PromptEncoder(None, settings)
        self.started = int(time.time())
        self.stopping = False  # SIGTERM came: no new work, open requests get the grace period
        self.cut_at: float | None = None  # loop time at which open requests are ended
        self._cuts: set = set()  # the asyncio.Timeout of every await that the cut ends

    # -- the in-flight bound -------------------------------------------------------------
    def take_slot(self) -> None:
        s = self.settings
        if self.in_flight >= s.max_in_flight:
            raise api.ApiError(503, f"the server is at its bound of {s.max_in_flight} requests "
                               f"in flight; retry after {s.retry_after_s} s", type="server_error",
                               code="server_busy", headers={"Retry-After": str(s.retry_after_s)})
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)

    def release_slot(self) -> None:
        self.in_flight -= 1
        self.metrics.in_flight.set(self.in_flight)

    # -- the graceful stop ---------------------------------------------------------------
    def begin_stop(self) -> None:
        """SIGTERM: refuse new generations; what is open may finish within the grace period,
        then every await on the engine is ended (:meth:`_until_cut`). Idempotent."""
        if self.stopping:
            return
        self.stopping = True
        self.cut_at = asyncio.get_running_loop().time() + self.settings.graceful_timeout_s
        log.info("stopping: %d request(s) open get %.1f s to finish", self.in_flight,
                 self.settings.graceful_timeout_s)
        for cut in self._cuts:
            cut.reschedule(self.cut_at)

    async def _until_cut(self, coro):
        """``await coro``, or ServerStopping once the grace period after SIGTERM is over."""
        try:
            async with asyncio.timeout_at(self.cut_at) as cut:
                self._cuts.add(cut)
                try:
                    return await coro
                finally:
                    self._cuts.discard(cut)
        except TimeoutError:
            if self.stopping:
                raise ServerStopping from None
            raise

    def _stopping_error(self) -> api.ApiError:
        return api.ApiError(503, "the server is shutting down", type="server_error",
                            code="server_shutting_down", headers={"Connection": "close"})

    # -- generation routes ---------------------------------------------------------------
    async def generate(self, request: HttpRequest, kind: str) -> Response:
        t_recv = time.perf_counter()
        if self.stopping:
            raise self._stopping_error()
        try:  # before any slot: the body read (bounded), checked, its prompt encoded
            parsed = api.parse_request(kind, await read_body(request, self.settings),
                                       self.settings)
            _notes(request)["model"] = parsed.model
            parsed = await until_disconnect(request, self.prompts.prepare(parsed))
        except ClientGone:
            _notes(request)["client"] = "gone"
            return Response(status_code=499)
        self.take_slot()
        owned, gen = True, None  # the slot (and gen) pass to a stream response once it exists
        try:
            gen = Generation(self.engine, parsed, t_recv, self.prompts)
            if parsed.stream:  # primed: the first text (or the end) before the headers
                first = await until_disconnect(request, self._until_cut(gen.next_text()))
                owned = False
                return self._stream(request, gen, first)
            text = await until_disconnect(request, self._until_cut(gen.run()))
            usage, timings = gen.usage(), gen.timings()
            self._finished(request, gen, usage, timings)
            return JSONResponse(api.response_body(parsed, text, gen.finish_reason, usage, timings),
                                headers=timing_headers(timings))
        except ClientGone:
            _notes(request)["client"] = "gone"
            return Response(status_code=499)
        except ServerStopping:
            self.metrics.cut.labels("request").inc()
            _notes(request)["ended"] = "shutdown"
            raise self._stopping_error() from None
        except KrmlxError as e:
            raise api_error(e) from None
        finally:
            if owned:
                if gen is not None:
                    await gen.aclose()
                self.release_slot()

    def _finished(self, request, gen: Generation, usage: dict, timings: dict) -> None:
        self.metrics.observe(timings, usage)
        _notes(request).update(tokens=usage["completion_tokens"], finish=gen.finish_reason,
                               ttft_ms=f"{timings['ttft_ms'] or 0:.1f}")

    def _stream(self, request: HttpRequest, gen: Generation, first: str | None) -> Response:
        async def on_close():
            await gen.aclose()
            self.release_slot()

        head = timing_headers(gen.timings(), ("queue_ms", "ttft_ms"))
        return _Stream(self._events(request, gen, first), on_close=on_close, sep="\n",
                       ping=PING_S, headers=head)

    async def _events(self, request: HttpRequest, gen: Generation, first: str | None):
        p = gen.parsed
        self.metrics.active_streams.inc()
        try:
            if p.kind == "chat":
                yield ServerSentEvent(_json(api.chunk_body(p, "", role=True)))
            piece = first
            while piece is not None:
                event = ServerSentEvent(_json(api.chunk_body(p, piece)))
                if gen.t_sse_first is None:
                    gen.t_sse_first = time.perf_counter()
                yield event
                piece = await self._until_cut(gen.next_text())
            yield ServerSentEvent(_json(api.chunk_body(p, None, gen.finish_reason)))
            usage, timings = gen.usage(), gen.timings()
            self._finished(request, gen, usage, timings)
            if p.include_usage:  # with this request's hops (krmlx.timeline) in its timings
                timings = {**timings, "timeline": gen.timeline()}
                yield ServerSentEvent(_json(api.usage_chunk_body(p, usage, timings)))
            yield ServerSentEvent("[DONE]")
            _notes(request)["complete"] = True
        except (KrmlxError, ServerStopping) as e:
            if isinstance(e, ServerStopping):
                err = self._stopping_error()
                self.metrics.cut.labels("stream").inc()
                _notes(request).update(ended="shutdown", complete=True, status=503)
            else:
                err = api_error(e)
                log.warning("stream %s ended by %s", p.response_id, err.message)
            _notes(request)["error"] = err.code
            yield ServerSentEvent(_json(err.body()))
            yield ServerSentEvent("[DONE]")
        finally:
            self.metrics.active_streams.dec()

    # -- other routes --------------------------------------------------------------------
    async def models(self, request: HttpRequest) -> Response:
        return JSONResponse(api.models_body(self.settings, self.started))

    async def health(self, request: HttpRequest) -> Response:
        engine = await engine_status(self.engine)
        if self.settings.api_key:  # open to anyone: healthy or not, nothing more
            healthy = engine.get("up") and not self.stopping
            return JSONResponse({"status": "ok" if healthy else "unavailable"},
                                status_code=200 if healthy else 503)
        return JSONResponse({"status": "stopping" if self.stopping else "ok",
                             "model": self.settings.model_id, "engine": engine,
                             "in_flight": self.in_flight,
                             "max_in_flight": self.settings.max_in_flight})

    async def metrics_text(self, request: HttpRequest) -> Response:
        return Response(await self.metrics.render(), media_type=CONTENT_TYPE)


async def _api_error(request, exc: api.ApiError) -> Response:
    _notes(request).update(error=exc.code, **({"param": exc.param} if exc.param else {}))
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(request, exc: HTTPException) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    err = api.ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                       code=code)
    return JSONResponse(err.body(), status_code=exc.status_code, headers=exc.headers)


async def _internal_error(request, exc: Exception) -> Response:
    log.error("internal error on %s", request.url.path, exc_info=exc)
    err = api.ApiError(500, f"internal server error: {type(exc).__name__}", type="server_error",
                       code="internal_error")
    return JSONResponse(err.body(), status_code=500)


def make_app(engine, settings: ServeSettings) -> Starlette:
    """The app over ``engine`` (started in its lifespan, closed at its end)."""
    state = ServeState(engine, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async with engine:
            state.prompts = PromptEncoder(getattr(engine, "path", None), settings)
            warm = None
            if state.prompts.path is not None:  # off the startup path, in a thread
                warm = asyncio.ensure_future(asyncio.to_thread(state.prompts.load))
            try:
                yield
            finally:
                if warm is not None and not warm.done():
                    warm.cancel()
                state.prompts.close()

    async def chat(request):
        return await state.generate(request, "chat")

    async def completions(request):
        return await state.generate(request, "text")

    routes = [Route("/v1/chat/completions", chat, methods=["POST"]),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/models", state.models, methods=["GET"]),
              Route("/health", state.health, methods=["GET"]),
              Route("/metrics", state.metrics_text, methods=["GET"])]
    middleware = [Middleware(AccessLog, metrics=state.metrics)]
    if settings.api_key:
        middleware.append(Middleware(ApiKeyAuth, api_key=settings.api_key))
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={api.ApiError: _api_error, HTTPException: _http_error,
                                        Exception: _internal_error})
    app.state.serve = state
    return app
