"""StreamFramer (reference Phase 5): how tokens travel from the worker to the caller.

The framing itself happens on the wire, where it costs or saves something: the stage's
:class:`~krmlx.framing.FramerConfig` (the one framing type) is handed to the worker at spawn (binary msgpack
frames instead of JSON lines; token coalescing, up to N tokens or T ms per frame with
the first token never held, so TTFT is not inflated; a backpressure window of
unacknowledged frames per stream, past which a slow consumer's tokens are held in the
worker and sent coalesced, never pausing the compute thread for the other streams).

The stage object sits just above the worker client (by default) and measures what the framing did,
per stream: ``streams``, ``tokens``, ``chunks_per_stream_mean``, ``max_gap_ms`` (the
largest gap between two chunks reaching the caller) and ``first_chunk_ms_mean`` (call to
first chunk). It passes every item through unchanged, around any service, so it can also
be used to observe a user's own service. Errors pass through untouched; closing the
stream early closes the inner one (which cancels the generation).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from ..framing import FramerConfig
from ..service import Call, Service, Stage
from ..types import Chunk


class StreamFramer(Stage):
    name = "framer"

    def __init__(self, inner: Service, config: FramerConfig | None = None, *,
                 clock=time.perf_counter):
        super().__init__(inner)
        self.config = config if config is not None else FramerConfig()
        self._clock = clock
        self.stats = {"streams": 0, "tokens": 0, "chunks_per_stream_mean": 0.0,
                      "max_gap_ms": 0.0, "first_chunk_ms_mean": 0.0}
        self._first_total_ms = 0.0

    def call(self, call: Call) -> AsyncIterator[Any]:
        return self._observe(call) if call.streaming else self.inner.call(call)

    async def _observe(self, call: Call):
        stats = self.stats
        t0 = last = self._clock()
        n = 0
        it = self.inner.call(call)
        try:
            async for item in it:
                if type(item) is Chunk:
                    now = self._clock()
                    if n == 0:
                        self._first_total_ms += (now - t0) * 1e3
                    elif (now - last) * 1e3 > stats["max_gap_ms"]:
                        stats["max_gap_ms"] = (now - last) * 1e3
                    last = now
                    n += 1
                yield item
        finally:
            await it.aclose()
            stats["streams"] += 1
            stats["tokens"] += n
            stats["chunks_per_stream_mean"] = stats["tokens"] / stats["streams"]
            stats["first_chunk_ms_mean"] = self._first_total_ms / stats["streams"]
