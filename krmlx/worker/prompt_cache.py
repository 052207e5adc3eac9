"""Prompt-cache reuse: requests that share a prefix reuse its KV state.

A thin layer over mlx-lm's own :class:`mlx_lm.models.cache.LRUPromptCache` (a trie of
token prefixes with LRU eviction under an entry count and a byte budget). After a
request, the KV cache is trimmed back to the prompt and stored under the prompt's tokens;
a later request takes the nearest stored prefix (deep-copied, trimmed when it is longer
than the shared part) and only processes the rest of its prompt.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class PromptCacheConfig:
    max_entries: int = 16
    max_bytes: int = 2 * 2**30

    def __post_init__(self):
        if self.max_entries < 1 or self.max_bytes < 1:
            raise ValueError("prompt cache: max_entries and max_bytes must be positive")

    def to_dict(self) -> dict:
        return asdict(self)


class PromptCache:
    def __init__(self, config: PromptCacheConfig):
        from mlx_lm.models.cache import LRUPromptCache

        self.config = config
        self._lru = LRUPromptCache(max_size=config.max_entries, max_bytes=config.max_bytes)
        self._lock = threading.Lock()
        self.stats = {"lookups": 0, "hits": 0, "hit_tokens": 0, "prompt_tokens": 0,
                      "entries": 0, "bytes": 0}

    def fetch(self, model_id: str, model, prompt_ids: list[int]):
        """(cache, rest): a KV cache holding a prefix of the prompt, and the tokens after it."""
        from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

        with self._lock:
            cache, rest = self._lru.fetch_nearest_cache(model_id, list(prompt_ids))
        self.stats["lookups"] += 1
        self.stats["prompt_tokens"] += len(prompt_ids)
        if cache is None:
            return make_prompt_cache(model), list(prompt_ids)
        if not rest:  # the whole prompt is cached: recompute its last token for the logits
            trim_prompt_cache(cache, 1)
            rest = list(prompt_ids[-1:])
        self.stats["hits"] += 1
        self.stats["hit_tokens"] += len(prompt_ids) - len(rest)
        return cache, list(rest)

    def store(self, model_id: str, prompt_ids: list[int], cache) -> None:
        """Trim ``cache`` back to the prompt and keep it under the prompt's tokens."""
        from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

        if not cache or not can_trim_prompt_cache(cache):
            return
        extra = cache[0].offset - len(prompt_ids)
        if extra < 0:
            return
        if extra:
            trim_prompt_cache(cache, extra)
        with self._lock:
            self._lru.insert_cache(model_id, list(prompt_ids), cache)
            self.stats["entries"], self.stats["bytes"] = len(self._lru), self._lru.nbytes

    def clear(self) -> None:
        """Drop every entry (on a model unload: entries keep their model's KV memory)."""
        with self._lock:
            self._lru.trim_to(n_sequences=0)
            self.stats["entries"], self.stats["bytes"] = 0, 0
