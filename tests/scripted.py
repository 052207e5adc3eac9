"""ScriptedService: the scripted-faults fake that stage tests wrap (one copy for all of them).

Each ``call()`` plays the next script (the last one repeats): exceptions are raised,
callables are run (e.g. to advance a fake clock), anything else is yielded. ``calls``
counts calls, ``closed`` counts inner iterators whose body ended (finished, failed or
closed early), ``methods`` records each call's method.
"""

from __future__ import annotations


class ScriptedService:
    def __init__(self, *scripts):
        self.scripts = list(scripts)
        self.calls = 0
        self.closed = 0
        self.methods: list[str] = []

    def call(self, call):
        script = self.scripts[min(self.calls, len(self.scripts) - 1)]
        self.calls += 1
        self.methods.append(call.method)
        return self._play(script)

    async def _play(self, script):
        try:
            for step in script:
                if isinstance(step, BaseException):
                    raise step
                if callable(step):
                    step()
                    continue
                yield step
        finally:
            self.closed += 1

    async def aclose(self):
        pass
