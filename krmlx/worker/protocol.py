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
    try:
        return _check_envelope(frame)
    except ProtocolError as e:
        fid = frame.get("id") if isinstance(frame, dict) else None
        e.frame_id = fid if isinstance(fid, int) and not isinstance(fid, bool) else -1
        raise


def _check_envelope(frame) -> dict:
    if not isinstance(frame, dict):
        raise ProtocolError(f"frame must be a map, got {type(frame).__name__}")
    if frame.get("v") != VERSION:
        raise ProtocolError(f"frame version must be {VERSION}, got {frame.get('v')!r}")
    if frame.get("kind") not in KINDS:
        raise ProtocolError(f"unknown frame kind {frame.get('kind')!r}")
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
        out: list = []
        buf = self._buf
        buf += data
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = bytes(buf[start:nl])
            start = nl + 1
            if self._skipping:
                self._skipping = False
                continue
            if len(line) > self.max_frame_bytes:
                out.append(FrameTooLarge(f"frame of {len(line)} bytes exceeds the limit of {self.max_frame_bytes}"))
                continue
            if not line.strip():
                continue
            out.append(self._decode(line))
        del buf[:start]
        if len(buf) > self.max_frame_bytes:
            if not self._skipping:
                out.append(FrameTooLarge(f"frame exceeds the limit of {self.max_frame_bytes} bytes"))
            self._skipping = True
            buf.clear()
        return out

    @staticmethod
    def _decode(line: bytes):
        try:
            return validate_frame(orjson.loads(line))
        except orjson.JSONDecodeError as e:
            return ProtocolError(f"malformed JSON frame: {e}")
        except ProtocolError as e:
            return e


class MsgpackCodec:
    name = "msgpack"

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES):
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._skip = 0  # bytes of an oversized frame still to drop

    @staticmethod
    def encode(frame: dict) -> bytes:
        body = msgpack.packb(frame)
        return _LEN.pack(len(body)) + body

    def feed(self, data: bytes) -> list:
        out: list = []
        buf = self._buf
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        buf += data
        pos = 0
        while len(buf) - pos >= 4:
            (n,) = _LEN.unpack_from(buf, pos)
            if n > self.max_frame_bytes:
                out.append(FrameTooLarge(f"frame of {n} bytes exceeds the limit of {self.max_frame_bytes}"))
                available = len(buf) - pos - 4
                if available >= n:
                    pos += 4 + n
                    continue
                self._skip = n - available
                pos = len(buf)
                break
            if len(buf) - pos - 4 < n:
                break
            body = bytes(buf[pos + 4:pos + 4 + n])
            pos += 4 + n
            out.append(self._decode(body))
        del buf[:pos]
        return out

    @staticmethod
    def _decode(body: bytes):
        try:
            return validate_frame(msgpack.unpackb(body, strict_map_key=False))
        except ProtocolError as e:
            return e
        except Exception as e:  # msgpack raises several types for bad input
            return ProtocolError(f"malformed msgpack frame: {type(e).__name__}: {e}")


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
