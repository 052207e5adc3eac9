"""Wire codecs for the worker's stdio protocol.

Every frame is one envelope (a map) with ``v`` (protocol version), ``id`` and
``kind``. Two codecs carry it, chosen when the worker is spawned:

- ``json``: one orjson document per line (newline-delimited JSON);
- ``msgpack``: a 4-byte big-endian length, then a msgpack map.

Frame kinds, client -> worker: ``call`` (``method``, ``params``, ``model``) and ``ack``
(stream credit: the client consumed ``n`` token frames of stream ``id``).
Worker -> client: ``ready`` (handshake, id 0), ``result`` (``value``), ``token``
(``tokens``: a list of ``[token_id, text]`` pairs: the new text of each token, never the
whole text so far; several when coalesced), ``done`` (``finish_reason``,
``prompt_tokens``, ``tail``) and ``error`` (``code``, ``message``).

A frame over ``max_frame_bytes`` is skipped, not buffered: the decoder reports a
:class:`~krmlx.errors.FrameTooLarge` and carries on with the next frame, so one bad
frame costs memory bounded by the limit and never desynchronises the stream.

A decoder never raises on bad input: whatever fails while decoding or checking a frame
(invalid bytes, a non-map, a wrong ``v``, a ``kind`` that is not a known string, even
an unhashable one) comes back as a :class:`~krmlx.errors.ProtocolError` whose
``frame_id`` is the frame's own id when it had a usable int id, else -1.
"""

from __future__ import annotations

import struct

import msgpack
import orjson

from ..errors import FrameTooLarge, ProtocolError

VERSION = 1
DEFAULT_MAX_FRAME_BYTES = 8 * 2**20
CODECS = ("json", "msgpack")
KINDS = frozenset({"call", "ack", "ready", "result", "token", "done", "error"})
_LEN = struct.Struct(">I")


def validate_frame(frame) -> dict:
    """Check the envelope; raise ProtocolError naming what is wrong (with ``frame_id``
    set when the frame had a usable id, so the error can be routed back)."""
    if type(frame) is dict:
        kind = frame.get("kind")
        if (type(kind) is str and kind in KINDS and frame.get("v") == VERSION
                and type(frame.get("id")) is int):
            return frame  # the fast path: a well-formed envelope
    try:
        return _check_envelope(frame)
    except ProtocolError as e:
        e.frame_id = _usable_id(frame)
        raise


def _usable_id(frame) -> int:
    """The frame's own id when it is a map with an int id, else -1."""
    fid = frame.get("id") if isinstance(frame, dict) else None
    return fid if isinstance(fid, int) and not isinstance(fid, bool) else -1


def _invalid(frame, exc: Exception) -> ProtocolError:
    """Any unexpected failure while checking a decoded frame, as a ProtocolError that
    keeps the frame's id when it had a usable one (so the error can be routed back)."""
    if isinstance(exc, ProtocolError):
        return exc
    err = ProtocolError(f"invalid frame: {type(exc).__name__}: {exc}")
    try:
        err.frame_id = _usable_id(frame)
    except Exception:  # noqa: BLE001 - a frame too odd to read an id from
        err.frame_id = -1
    return err


def _check_envelope(frame) -> dict:
    if not isinstance(frame, dict):
        raise ProtocolError(f"frame must be a map, got {type(frame).__name__}")
    if frame.get("v") != VERSION:
        raise ProtocolError(f"frame version must be {VERSION}, got {frame.get('v')!r}")
    kind = frame.get("kind")
    if type(kind) is not str or kind not in KINDS:  # a list or map kind is unhashable
        raise ProtocolError(f"unknown frame kind {kind!r}")
    fid = frame.get("id")
    if not isinstance(fid, int) or isinstance(fid, bool):
        raise ProtocolError(f"frame id must be an int, got {fid!r}")
    return frame


class JsonCodec:
    name = "json"

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES):
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._skipping = False  # inside an oversized line: drop bytes up to its newline

    @staticmethod
    def encode(frame: dict) -> bytes:
        return orjson.dumps(frame) + b"\n"

    def feed(self, data: bytes) -> list:
        """Frames (dicts) and errors (ProtocolError instances) decoded from ``data``."""
        if self._buf:
            data = bytes(self._buf) + data
            self._buf.clear()
        lines = data.split(b"\n")
        rest = lines.pop()
        out: list = []
        limit = self.max_frame_bytes
        for line in lines:
            if self._skipping:  # the tail of an oversized line
                self._skipping = False
                continue
            if len(line) > limit:
                out.append(FrameTooLarge(f"frame of {len(line)} bytes exceeds the limit of {limit}"))
            elif line and not line.isspace():
                out.append(self._decode(line))
        if self._skipping or len(rest) > limit:
            if not self._skipping:
                out.append(FrameTooLarge(f"frame exceeds the limit of {limit} bytes"))
            self._skipping = True
        else:
            self._buf += rest
        return out

    @staticmethod
    def _decode(line: bytes):
        """A frame, or a ProtocolError: never raises (any exception becomes one)."""
        try:
            frame = orjson.loads(line)
        except Exception as e:  # noqa: BLE001 - JSONDecodeError and anything else
            return ProtocolError(f"malformed JSON frame: {e}")
        try:
            return validate_frame(frame)
        except Exception as e:  # noqa: BLE001
            return _invalid(frame, e)


class MsgpackCodec:
    name = "msgpack"

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES):
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._skip = 0  # bytes of an oversized frame still to drop
        self._packer = msgpack.Packer()  # reused: much cheaper than packb per frame

    def encode(self, frame: dict) -> bytes:
        body = self._packer.pack(frame)
        return _LEN.pack(len(body)) + body

    def feed(self, data: bytes) -> list:
        out: list = []
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        buf = bytes(self._buf) + data if self._buf else data
        pos, end, limit = 0, len(buf), self.max_frame_bytes
        decode = self._decode
        while end - pos >= 4:
            n = int.from_bytes(buf[pos:pos + 4], "big")
            if n > limit:
                out.append(FrameTooLarge(f"frame of {n} bytes exceeds the limit of {limit}"))
                if end - pos - 4 >= n:
                    pos += 4 + n
                    continue
                self._skip = n - (end - pos - 4)
                pos = end
                break
            if end - pos - 4 < n:
                break
            # a bytes slice (a small copy) unpacks faster than a memoryview slice
            out.append(decode(buf[pos + 4:pos + 4 + n]))
            pos += 4 + n
        self._buf = bytearray(buf[pos:]) if pos < end else bytearray()
        return out

    @staticmethod
    def _decode(body) -> dict | ProtocolError:
        """A frame, or a ProtocolError: never raises (any exception becomes one)."""
        try:
            frame = msgpack.unpackb(body)  # map keys must be strings (the envelope's are)
        except Exception as e:  # noqa: BLE001 - msgpack raises several types for bad input
            return ProtocolError(f"malformed msgpack frame: {type(e).__name__}: {e}")
        try:
            return validate_frame(frame)
        except Exception as e:  # noqa: BLE001
            return _invalid(frame, e)


def make_codec(name: str, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES):
    if name == "json":
        return JsonCodec(max_frame_bytes)
    if name == "msgpack":
        return MsgpackCodec(max_frame_bytes)
    raise ValueError(f"codec: must be one of {CODECS}, got {name!r}")


def call_frame(fid: int, method: str, params: dict | None = None, model: str | None = None) -> dict:
    frame = {"v": VERSION, "id": fid, "kind": "call", "method": method, "params": params or {}}
    if model is not None:
        frame["model"] = model
    return frame


def error_frame(fid: int, code: str, message: str) -> dict:
    return {"v": VERSION, "id": fid, "kind": "error", "code": code, "message": message}
