"""Serving stages and their configs (the layers of :class:`krmlx.stack.StackConfig`).

Each stage wraps the service below it (:mod:`krmlx.service`); each config is the data a
stack is made of. The order rules are in :mod:`krmlx.stack`.
"""

from ..framing import FramerConfig
from .batcher import Batcher, BatcherConfig
from .breaker import BreakerPolicy, CircuitBreaker
from .framer import StreamFramer
from .model_cache import ModelCache, ModelCacheConfig, SingleModel, SingleModelConfig
from .retry import Retry, RetryPolicy

__all__ = ["Batcher", "BatcherConfig", "BreakerPolicy", "CircuitBreaker", "FramerConfig",
           "ModelCache", "ModelCacheConfig", "Retry", "RetryPolicy", "SingleModel",
           "SingleModelConfig", "StreamFramer"]
