"""``http://HOST:PORT/v1[?model=ID&api_key=K]``: any OpenAI-compatible endpoint already
running, through krmlx's HTTP client (:mod:`krmlx.bench.http`).

Contract: as :class:`~krmlx.bench.targets.base.Target` (generate only); the model id is
the given one, else the served model whose name matches, else the first listed; a server
without a model list needs ``?model=ID``.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from ...errors import KrmlxError
from ...models import resolve_model
from ...types import Completion, Request
from ..http import OpenAIClient
from .base import Target


def from_spec(url: str, options: dict, name: str | None, spec: str) -> Target:
    return HttpTarget(url, name, spec, model_id=options.pop("model", None),
                      api_key=options.pop("api_key", None) or os.environ.get("KRMLX_API_KEY"))


class HttpTarget(Target):
    """Any OpenAI-compatible endpoint (``base_url`` ends in ``/v1``). ``model_id`` None: the
    first model the server lists (``/v1/models``)."""

    kind = "http"

    def __init__(self, base_url: str, name: str | None = None, spec: str | None = None, *,
                 model_id: str | None = None, api_key: str | None = None,
                 max_connections: int = 256):
        super().__init__(name or "http:" + urlsplit(base_url).netloc, spec or base_url)
        self.base_url, self.model_id, self.api_key = base_url.rstrip("/"), model_id, api_key
        self.max_connections = max_connections
        self.client = None
        self.served_models: list[str] = []
        self.models_error: str | None = None  # /models failed (the model id was given)

    async def start(self, model: str) -> HttpTarget:
        if self.client is None:
            self.model = model
            try:
                self.folder = resolve_model(model)
            except KrmlxError:
                self.folder = None  # a model only the server knows
            self.client = OpenAIClient(self.base_url, api_key=self.api_key,
                                       max_connections=self.max_connections,
                                       count_tokens=self._token_counter())
            try:
                self.served_models = await self.client.models()
            except Exception as e:
                if self.model_id is None:  # without a list, only a given model id will do
                    await self.client.aclose()
                    self.client = self.model = None
                    raise KrmlxError(f"{self.name}: no model list from {self.base_url}/models "
                                     f"({type(e).__name__}: {e}); give ?model=ID") from None
                self.models_error = f"{type(e).__name__}: {e}"
            if self.model_id is None:
                self.model_id = self._pick_model()
        return self

    def _pick_model(self) -> str:
        names = self.served_models
        if not names:
            raise KrmlxError(f"{self.name}: {self.base_url}/models lists no model")
        for candidate in (self.model, str(self.folder) if self.folder else None):
            if candidate in names:
                return candidate
        return names[0]

    def _token_counter(self):
        """Counts output tokens with the model's tokenizer for servers that send no usage."""
        if self.folder is None:
            return None
        tokenizer = []

        def count(text: str) -> int:
            if not tokenizer:
                from transformers import AutoTokenizer

                tokenizer.append(AutoTokenizer.from_pretrained(str(self.folder)))
            return len(tokenizer[0].encode(text, add_special_tokens=False))

        return count

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()
        self.client = self.model = None

    async def generate(self, request: Request) -> Completion:
        if request.model not in (None, self.model):
            raise self.lacks("model switching")
        if request.prompt_ids is not None:
            raise self.lacks("prompt_ids (an OpenAI server takes text)")
        return await self.client.generate(request, self.model_id)

    def info(self) -> dict:
        out = {**super().info(), "base_url": self.base_url, "model_id": self.model_id,
               "served_models": self.served_models, "models_error": self.models_error}
        if self.client is not None:
            out["http_client"] = self.client.describe()
        return out
