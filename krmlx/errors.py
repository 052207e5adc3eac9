"""krmlx's exceptions. Every error krmlx raises on purpose is a :class:`KrmlxError`::

    KrmlxError
    ├── BadRequest          a parameter is invalid (also a ValueError); names the field
    ├── ModelError          a model can't be found, built or loaded
    │   └── UnknownModel    no preset, folder or reachable hub id by that name
    ├── ProtocolError       a frame could not be decoded or is malformed
    │   └── FrameTooLarge   a frame exceeds the size limit
    ├── WorkerError         the worker answered a call with an error frame (has .code)
    │   └── TransientError  an error worth retrying (code "transient")
    ├── WorkerCrashed       the worker process died; every pending call fails with it
    ├── CallTimeout         a call took longer than its timeout
    ├── CircuitOpen         the circuit breaker rejects calls fast
    ├── ConfigError         a StackConfig / workload setting is invalid (also a ValueError)
    └── ResultsError        a results file is truncated or of another schema
"""

from __future__ import annotations


class KrmlxError(Exception):
    """Root of krmlx's exceptions."""


class BadRequest(KrmlxError, ValueError):
    pass


class ModelError(KrmlxError):
    pass


class UnknownModel(ModelError):
    pass


class ProtocolError(KrmlxError):
    pass


class FrameTooLarge(ProtocolError):
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


class CallTimeout(KrmlxError, TimeoutError):
    pass


class CircuitOpen(KrmlxError):
    pass


class ConfigError(KrmlxError, ValueError):
    pass


class ResultsError(KrmlxError):
    pass


def error_from_code(code: str, message: str) -> WorkerError | KrmlxError:
    """The exception a client raises for an error frame with ``code``."""
    if code == "transient":
        return TransientError(message)
    if code == "bad_request":
        return BadRequest(message)
    if code == "unknown_model":
        return UnknownModel(message)
    if code == "frame_too_large":
        return FrameTooLarge(message)
    return WorkerError(code, message)
