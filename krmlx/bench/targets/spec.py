"""Spec strings -> targets: one parser that looks the kind up in :data:`KINDS`.

``[NAME=]SPEC``; SPEC is ``KIND[:ARG][?k=v&...]`` (``k=v`` typed by :func:`parse_options`),
an ``http(s)://`` URL, or ``cmd:COMMAND`` (the rest of the string, verbatim). Each kind's
module has a ``from_spec`` that builds its target (None: the spec is not of that form).

Contract: :func:`make_target` returns a Target (not started) or raises ConfigError naming
the spec and the kinds there are.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from ...errors import ConfigError
from . import engine, http, inprocess, managed, peers
from .base import Target
from .managed import CommandServer

# kind -> its module's from_spec(kind, arg, options, name, spec)
KINDS = {"direct": inprocess.from_spec, "raw": inprocess.from_spec, "engine": engine.from_spec,
         "krmlx.serve": managed.from_spec, "mlx_lm.server": peers.from_spec,
         "peer": peers.from_spec}
SPEC_FORMS = ("direct, raw, engine[:PHASES][?k=v], http://HOST:PORT/v1, mlx_lm.server[?k=v], "
              "krmlx.serve[:PHASES][?k=v], cmd:COMMAND, peer:NAME")


def parse_options(query: str) -> dict:
    """``k=v&k=v`` as typed values (int, float, bool, None or text)."""
    out = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        low = value.lower()
        if low in ("true", "on", "yes"):
            out[key] = True
        elif low in ("false", "off", "no"):
            out[key] = False
        elif low in ("none", "null"):
            out[key] = None
        else:
            try:
                out[key] = int(value)
            except ValueError:
                try:
                    out[key] = float(value)
                except ValueError:
                    out[key] = value
    return out


def make_target(spec) -> Target:
    """A Target from its spec string (see :mod:`krmlx.bench.targets`), or ``spec`` itself
    if it is a Target already. ConfigError names what is wrong."""
    if isinstance(spec, Target):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"target: a spec string or a Target, got {spec!r}")
    text = spec.strip()
    name = None
    head = text.split(":", 1)[0].split("?", 1)[0]
    if "=" in head and not text.startswith(("http://", "https://", "cmd:")):
        name, text = text.split("=", 1)
    if text.startswith(("http://", "https://")):
        url, _, query = text.partition("?")
        return http.from_spec(url, parse_options(query), name, spec)
    if text.startswith("cmd:"):
        return CommandServer(text[4:], name, spec)
    base, _, query = text.partition("?")
    kind, _, arg = base.partition(":")
    make = KINDS.get(kind)
    target = make(kind, arg, parse_options(query), name, spec) if make else None
    if target is None:
        raise ConfigError(f"unknown target {spec!r}; targets: {SPEC_FORMS}")
    return target
