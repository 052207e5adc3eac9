"""krmlx's exceptions. Every error krmlx raises on purpose is a :class:`KrmlxError`::

    KrmlxError
    ├── BadRequest          a parameter is invalid (also a ValueError); names the field
    │   └── UnknownMethod   the worker has no method by that name
    ├── NotFound            the thing a call names does not exist (e.g. a stream to cancel)
    ├── ModelError          a model can't be found, built or loaded
    │   └── UnknownModel    no preset, folder or reachable hub id by that name
    ├── ProtocolError       a frame could not be decoded or is malformed (names the field)
    │   ├── FrameTooLarge   a frame exceeds the size limit
    │   └── ProtocolDesync  a length prefix no frame can have: the pipe can't be read on
    ├── WorkerError         the worker answered with an error code krmlx has no class for
    │   └── TransientError  an error worth retrying (code "transient")
    ├── WorkerCrashed       the worker process died or was closed; pending calls fail with it
    │   └── EngineClosed    the engine was closed while the call was open
    ├── CallTimeout         a call took longer than its deadline (also a TimeoutError)
    │   └── WorkerUnresponsive  no frame or heartbeat from the worker for too long
    ├── CircuitOpen         the circuit breaker rejects calls fast
    ├── ConfigError         a StackConfig / workload setting is invalid (also a ValueError)
    └── ResultsError        a results file is truncated or of another schema

Errors that cross the worker's pipe travel as a code; the table of codes and classes is
:data:`krmlx.worker.protocol.ERROR_CODES` (every such exception carries ``.code``).
"""

from __future__ import annotations


class KrmlxError(Exception):
    """Root of krmlx's exceptions. ``code``: the protocol's name for it, once it has
    crossed the worker's pipe (None before)."""

    code: str | None = None


class BadRequest(KrmlxError, ValueError):
    pass


class UnknownMethod(BadRequest):
    pass


class NotFound(KrmlxError):
    pass


class ModelError(KrmlxError):
    pass


class UnknownModel(ModelError):
    pass


class ProtocolError(KrmlxError):
    pass


class FrameTooLarge(ProtocolError):
    pass


class ProtocolDesync(ProtocolError):
    pass


class WorkerError(KrmlxError):
    """An error frame from the worker. ``code`` is one of the protocol's error codes."""

    def __init__(self, code: str, message: str):
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message


class TransientError(WorkerError):
    def __init__(self, message: str, code: str = "transient"):
        super().__init__(code, message)


class WorkerCrashed(KrmlxError):
    pass


class EngineClosed(WorkerCrashed):
    pass


class CallTimeout(KrmlxError, TimeoutError):
    pass


class WorkerUnresponsive(CallTimeout):
    pass


class CircuitOpen(KrmlxError):
    pass


class ConfigError(KrmlxError, ValueError):
    pass


class ResultsError(KrmlxError):
    pass
