"""The worker's stdio protocol: frames, codecs, the method table and the error table.

Every frame is one envelope (a map) with ``v`` (:data:`VERSION`), ``id`` and ``kind``; every
frame kind is built by one function here and read by one function here, so both sides
share the field names. Kinds, client -> worker:

- ``call`` (:func:`call_frame`): ``method``, ``params``, ``model`` (see :data:`METHODS`);
- ``ack`` (:func:`ack_frame`): stream credit, the client consumed ``n`` token frames of
  stream ``id``.

Worker -> client:

- ``ready`` (:func:`ready_frame`, id 0): the handshake, with what the worker runs on;
- ``result`` (:func:`result_frame`, read by :func:`read_result`): a unary call's ``value``;
- ``token`` (:func:`token_frame`, :func:`read_tokens`): ``tokens``, a list of
  ``[token_id, text]`` pairs (the new text of each token, several when coalesced);
- ``done`` (:func:`done_frame`, :func:`read_done`): ``finish_reason``, ``prompt_tokens``,
  ``tail``, ``tokens``, ``info``;
- ``error`` (:func:`error_frame`, :func:`read_error`): ``code`` (:data:`ERROR_CODES`) and
  ``message``;
- ``heartbeat`` (:func:`heartbeat_frame`, id 0): the worker is alive; sent while it is busy,
  so a client can tell a long computation from a hung worker.

Two codecs carry the envelope, chosen when the worker is spawned: ``json`` (one orjson
document per line) and ``msgpack`` (a 4-byte big-endian length, then a msgpack map; token
frames, the per-token hot path, as the compact array ``["t", id, tokens]``, read back as
the same envelope).

Decoders never raise on bad input: whatever fails while decoding or checking a frame comes
back as a :class:`~krmlx.errors.ProtocolError` whose ``frame_id`` is the frame's own id when
it had a usable int id, else -1. A JSON line over ``max_frame_bytes`` is skipped up to its
newline (:class:`~krmlx.errors.FrameTooLarge`; the stream stays in sync). A msgpack length
prefix over the limit can't be told from a corrupt one (no sender of this protocol writes
one: both check before sending), and skipping it could swallow every later frame, so the
codec reports it as a :class:`~krmlx.errors.ProtocolDesync` and stops decoding: the reader
must give the pipe up (the worker exits; the client restarts it).
"""

from __future__ import annotations

import struct

import msgpack
import orjson

from ..errors import (
    BadRequest,
    CallTimeout,
    FrameTooLarge,
    KrmlxError,
    ModelError,
    NotFound,
    ProtocolDesync,
    ProtocolError,
    TransientError,
    UnknownMethod,
    UnknownModel,
    WorkerError,
    WorkerUnresponsive,
)
from ..framing import CODECS
from ..service import METHODS, NULL_MODEL  # noqa: F401 (the calls; the worker reads them here)

VERSION = 1
DEFAULT_MAX_FRAME_BYTES = 8 * 2**20
KINDS = frozenset({"call", "ack", "ready", "result", "token", "done", "error", "heartbeat"})
_LEN = struct.Struct(">I")
TOKEN_MARK = "t"  # msgpack carries token frames as the array ["t", id, tokens]


# -- errors ------------------------------------------------------------------------------------

# code <-> exception type, for both sides: the worker names an exception by the first class
# of its MRO found here; the client raises that class (with ``.code``) for an error frame.
ERROR_CODES: dict[str, type[KrmlxError]] = {
    "transient": TransientError,
    "frame_too_large": FrameTooLarge,
    "protocol_desync": ProtocolDesync,
    "protocol_error": ProtocolError,
    "unknown_method": UnknownMethod,
    "bad_request": BadRequest,
    "unknown_model": UnknownModel,
    "model_error": ModelError,
    "not_found": NotFound,
    "timeout": CallTimeout,
    "unresponsive": WorkerUnresponsive,
}
_CODE_OF = {cls: code for code, cls in ERROR_CODES.items()}


def error_code(exc: BaseException) -> str:
    """The protocol code of ``exc`` (``internal`` for anything krmlx did not raise on purpose)."""
    for cls in type(exc).__mro__:
        code = _CODE_OF.get(cls)
        if code is not None:
            return code
    return getattr(exc, "code", None) if isinstance(exc, WorkerError) else "internal"


def error_from_code(code: str, message: str) -> KrmlxError:
    """The exception a client raises for an error frame (every one carries ``.code``)."""
    cls = ERROR_CODES.get(code)
    exc = WorkerError(code, message) if cls is None else cls(message)
    exc.code = code
    return exc


# -- frames ------------------------------------------------------------------------------------

def call_frame(fid: int, method: str, params: dict | None = None, model: str | None = None) -> dict:
    frame = {"v": VERSION, "id": fid, "kind": "call", "method": method, "params": params or {}}
    if model is not None:
        frame["model"] = model
    return frame


def ack_frame(fid: int, n: int) -> dict:
    return {"v": VERSION, "id": fid, "kind": "ack", "n": n}


def ready_frame(**info) -> dict:
    return {"v": VERSION, "id": 0, "kind": "ready", **info}


def heartbeat_frame(busy: int) -> dict:
    return {"v": VERSION, "id": 0, "kind": "heartbeat", "busy": busy}


def result_frame(fid: int, value) -> dict:
    return {"v": VERSION, "id": fid, "kind": "result", "value": value}


def token_frame(fid: int, tokens: list) -> dict:
    return {"v": VERSION, "id": fid, "kind": "token", "tokens": tokens}


def done_frame(fid: int, finish_reason: str, prompt_tokens: int, tail: str, tokens: int,
               info: dict | None = None) -> dict:
    frame = {"v": VERSION, "id": fid, "kind": "done", "finish_reason": finish_reason,
             "prompt_tokens": prompt_tokens, "tail": tail, "tokens": tokens}
    if info:
        frame["info"] = info
    return frame


def error_frame(fid: int, code: str, message: str) -> dict:
    return {"v": VERSION, "id": fid, "kind": "error", "code": code, "message": message}


def _missing(frame: dict, field: str, want: str) -> ProtocolError:
    return ProtocolError(f"{frame['kind']} frame {frame['id']}: field {field!r} must be "
                         f"{want}, got {frame.get(field, '<missing>')!r:.80}")


def read_result(frame: dict):
    if "value" not in frame:
        raise _missing(frame, "value", "present")
    return frame["value"]


def read_tokens(frame: dict) -> list:
    """The ``[token_id, text]`` pairs of a token frame (checked; ProtocolError names the field)."""
    tokens = frame.get("tokens")
    if type(tokens) is list:
        for pair in tokens:
            if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not int \
                    or type(pair[1]) is not str:
                break
        else:
            return tokens
    raise _missing(frame, "tokens", "a list of [token_id, text] pairs")


def read_done(frame: dict) -> tuple[str, int, str, dict]:
    """(finish_reason, prompt_tokens, tail, info) of a done frame."""
    reason, prompt_tokens = frame.get("finish_reason"), frame.get("prompt_tokens")
    if type(reason) is not str:
        raise _missing(frame, "finish_reason", "a string")
    if type(prompt_tokens) is not int:
        raise _missing(frame, "prompt_tokens", "an int")
    tail, info = frame.get("tail", ""), frame.get("info") or {}
    if type(tail) is not str:
        raise _missing(frame, "tail", "a string")
    if type(info) is not dict:
        raise _missing(frame, "info", "a map")
    return reason, prompt_tokens, tail, info


def read_error(frame: dict) -> KrmlxError:
    code, message = frame.get("code"), frame.get("message")
    if type(code) is not str:
        return _missing(frame, "code", "a string")
    return error_from_code(code, message if isinstance(message, str) else repr(message))


# -- envelope checks ---------------------------------------------------------------------------

def validate_frame(frame) -> dict:
    """Check the envelope; raise ProtocolError naming what is wrong (with ``frame_id`` set
    when the frame had a usable id, so the error can be routed back)."""
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


def _decoded(frame):
    try:
        return validate_frame(frame)
    except Exception as e:  # noqa: BLE001
        return _invalid(frame, e)


# -- codecs ------------------------------------------------------------------------------------

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
        return _decoded(frame)


class MsgpackCodec:
    name = "msgpack"

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES):
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._packer = msgpack.Packer()  # reused: much cheaper than packb per frame
        self.desync: ProtocolDesync | None = None  # set once: nothing more is decoded

    def encode(self, frame: dict) -> bytes:
        if frame.get("kind") == "token":  # the hot path, compact: ["t", id, tokens]
            body = self._packer.pack((TOKEN_MARK, frame["id"], frame["tokens"]))
        else:
            body = self._packer.pack(frame)
        return _LEN.pack(len(body)) + body

    def feed(self, data: bytes) -> list:
        if self.desync is not None:
            return []
        out: list = []
        buf = bytes(self._buf) + data if self._buf else data
        pos, end, limit = 0, len(buf), self.max_frame_bytes
        decode = self._decode
        while end - pos >= 4:
            n = int.from_bytes(buf[pos:pos + 4], "big")
            if n > limit:
                self.desync = ProtocolDesync(
                    f"msgpack length prefix of {n} bytes exceeds the frame limit of {limit}: "
                    "the stream is corrupt (or out of step) and can't be read further")
                self.desync.frame_id = -1
                out.append(self.desync)
                self._buf = bytearray()
                return out
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
        if type(frame) is list and len(frame) == 3 and frame[0] == TOKEN_MARK \
                and type(frame[1]) is int:
            return {"v": VERSION, "id": frame[1], "kind": "token", "tokens": frame[2]}
        return _decoded(frame)


def make_codec(name: str, max_frame_bytes: int | None = None):
    limit = max_frame_bytes or DEFAULT_MAX_FRAME_BYTES
    if name == "json":
        return JsonCodec(limit)
    if name == "msgpack":
        return MsgpackCodec(limit)
    raise ValueError(f"codec: must be one of {CODECS}, got {name!r}")
