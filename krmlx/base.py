"""What DirectEngine and Engine share: the async context manager and the model's size.

Subclasses implement ``start()``, ``close()``, ``stream()``, ``complete()`` and ``tokenize()``
and set ``path`` (the model folder) when started.
"""

from __future__ import annotations

from pathlib import Path

from .models import model_bytes


class BaseEngine:
    path: Path | None = None

    async def start(self):  # pragma: no cover - abstract
        raise NotImplementedError

    async def close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def __aenter__(self):
        try:
            return await self.start()
        except BaseException:
            await self.close()  # a half-started engine leaves no process or model behind
            raise

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def model_bytes(self) -> int:
        return model_bytes(self.path) if self.path else 0
