"""The app's two ASGI middlewares (pure ASGI, so streaming responses pass through as they
are, and a client's disconnect still reaches the route).

- :class:`AccessLog` (outermost): one info line per request (method, path, status, time,
  and what the route noted in ``scope["state"]["log"]``: model, tokens, finish reason) and
  ``krmlx_serve_requests_total{route, status}``. Status 499 in the line and the counter
  means the client left before the response was complete (the status sent is kept in
  the line as ``sent=``); a stream the server ended at its shutdown is 503 there (the
  route notes it), never 499.
- :class:`ApiKeyAuth`: with a key, every path but ``/health`` needs
  ``Authorization: Bearer <key>`` (the scheme in any case, RFC 7235); otherwise 401 with
  an OpenAI-style body; two ``Authorization`` headers are a 400 (which one counts would
  depend on who reads them).
"""

from __future__ import annotations

import hmac
import logging
import time

from starlette.responses import JSONResponse

from .openai_api import ApiError

log = logging.getLogger("krmlx.serve")
OPEN_PATHS = ("/health",)


class AccessLog:
    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        seen = {"status": None, "complete": False}
        scope.setdefault("state", {})["log"] = notes = {}

        async def send_seen(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                seen["complete"] = True
            await send(message)

        try:
            await self.app(scope, receive, send_seen)
        finally:
            status = seen["status"] or 500
            shown = notes.get("status") or (status if seen["complete"] or notes.get("complete")
                                            else 499)
            self.metrics.count_request(scope["path"], shown)
            extra = " ".join(f"{k}={v}" for k, v in notes.items()
                             if k not in ("complete", "status"))
            if shown != status:
                extra = f"sent={status} {extra}"
            log.info("%s %s %s %.1f ms %s", scope["method"], scope["path"], shown,
                     (time.perf_counter() - t0) * 1e3, extra)


class ApiKeyAuth:
    def __init__(self, app, api_key: str):
        self.app = app
        self.expected = api_key.encode()

    def _refusal(self, scope) -> JSONResponse | None:
        given = [v for k, v in scope["headers"] if k == b"authorization"]
        if len(given) > 1:
            err = ApiError(400, f"{len(given)} Authorization headers: send exactly one",
                           code="duplicate_authorization")
            return JSONResponse(err.body(), status_code=400)
        scheme, _, token = (given[0] if given else b"").strip().partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.expected):
            return None
        err = ApiError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
                       code="invalid_api_key")
        return JSONResponse(err.body(), status_code=401, headers={"WWW-Authenticate": "Bearer"})

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            response = self._refusal(scope)
            if response is not None:
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)
