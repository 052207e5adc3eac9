"""krmlx serve: one model over the OpenAI HTTP API (:mod:`krmlx.serve`)."""

from __future__ import annotations

import logging
import os
import sys

from ..engine import Engine
from ..errors import ConfigError
from ..serve import ServeSettings, make_app
from ..serve.server import make_server
from ..stack import StackConfig
from ..worker.prompt_cache import PromptCacheConfig


def serve_config(phases: str, scheduler: str, prompt_cache: bool):
    """The one StackConfig a server runs: ``--phases`` in :func:`krmlx.stack.parse_phases`'s
    grammar (phase0 | none | all | a comma list: the phases together, unlike bench's
    comparison sets)."""
    extra = {"scheduler": scheduler}
    if prompt_cache:
        extra["prompt_cache"] = PromptCacheConfig()
    return StackConfig.phases(phases, **extra)


def cmd_serve(args) -> int:
    """Serve one model over the OpenAI API (see krmlx.serve) until SIGINT / SIGTERM."""
    try:
        config = serve_config(args.phases, args.scheduler, args.prompt_cache)
        settings = ServeSettings(args.model, aliases=tuple(args.alias or ()),
                                 api_key=args.api_key or os.environ.get("KRMLX_API_KEY") or None,
                                 max_in_flight=args.max_in_flight,
                                 default_max_tokens=args.default_max_tokens,
                                 max_messages=args.max_messages,
                                 max_prompt_chars=args.max_prompt_chars,
                                 max_prompt_tokens=args.max_prompt_tokens,
                                 header_timeout_s=args.header_timeout,
                                 body_timeout_s=args.body_timeout,
                                 graceful_timeout_s=args.graceful_timeout)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = make_app(Engine(args.model, config), settings)
    print(f"krmlx serve: {args.model} ({config.label}, scheduler {config.worker.scheduler}) on "
          f"http://{args.host}:{args.port}/v1" + (" (API key required)" if settings.api_key else ""),
          file=sys.stderr, flush=True)
    server = make_server(app, settings, host=args.host, port=args.port,
                         log_level=args.log_level)
    server.run()
    return 0 if server.started else 1
