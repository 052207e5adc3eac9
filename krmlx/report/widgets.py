"""An ipywidgets panel: switch phases, set key knobs, pick a workload, run, watch, plot.

    panel = make_panel(model="tiny")      # shows itself when it is a cell's last value
    panel.phase["batching"].value = True   # or click
    doc = await panel.run()                # or press Run

The panel only edits a :class:`~krmlx.stack.StackConfig` (``dataclasses.replace`` on the
stage configs) and hands it to the bench's runner (:func:`krmlx.bench.runner.run_workload`)
with the chosen workload of :mod:`krmlx.bench.workloads`. There is no
measurement logic here. Each run writes its results file under ``out_dir`` and keeps
the document in ``panel.doc`` (its path in ``panel.path``); ``on_done(doc)`` is called
after the plot updates.
"""

from __future__ import annotations

import asyncio
import base64
import html
import time
import traceback
from dataclasses import replace
from pathlib import Path

from ..bench.verdicts import OVERHEAD_CAPTION
from ..framing import CODECS, FramerConfig
from ..stack import PHASES, StackConfig

GIB = 2**30


class WidgetProgress:
    """The runner's progress protocol (``total`` attribute, ``update(n)``) on an IntProgress,
    with an optional HTML ``label`` beside it: ``n/total · elapsed · rate``, the rate being
    count / elapsed since this object was made (no smoothing: a run's updates come in bursts
    after seconds of engine start-up, and a smoothed rate would describe only the start-up).
    A ``total`` of None (unknown) lets the bar's end grow with the count."""

    def __init__(self, bar, label=None, *, clock=time.perf_counter):
        self.bar, self.label, self.clock = bar, label, clock
        self.n = 0
        self._total = None
        self.t0 = clock()
        bar.value, bar.max = 0, 1
        self._show()

    @property
    def total(self) -> int | None:
        return self._total

    @total.setter
    def total(self, value) -> None:
        self._total = None if value is None else int(value)
        self.bar.max = max(1, self._total or self.n + 1)
        self._show()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._total is None or self.n > self.bar.max:
            self.bar.max = max(self.bar.max, self.n)
        self.bar.value = min(self.n, self.bar.max)
        self._show()

    def rate(self) -> float:
        """Requests per second so far: count / elapsed."""
        elapsed = self.clock() - self.t0
        return self.n / elapsed if elapsed > 0 else 0.0

    def text(self) -> str:
        total = "?" if self._total is None else str(self._total)
        return f"{self.n}/{total} · {self.clock() - self.t0:.1f} s · {self.rate():.1f} req/s"

    def _show(self) -> None:
        if self.label is not None:
            self.label.value = self.text()


def available_workloads() -> list[str]:
    """``baseline`` first, then every workload of :mod:`krmlx.bench.workloads`."""
    from ..bench.workloads import WORKLOADS

    return ["baseline", *(n for n in WORKLOADS if n != "baseline")]


def accepts(name: str, param: str) -> bool:
    """Whether workload ``name`` takes parameter ``param``."""
    from ..bench.workloads import WORKLOADS

    return name in WORKLOADS and WORKLOADS[name].accepts(param)


async def run_workload(name: str, model: str, *, configs: dict[str, StackConfig] | None = None,
                       targets=None, phases: str | None = None, smoke: bool = False,
                       trials: int = 1, progress=None, **params) -> dict:
    """Run workload ``name`` on ``model`` and return its results document.

    ``targets`` (specs or Target objects), or ``configs`` (name -> StackConfig: engines;
    ``phase0`` is added, every workload compares against it, and ``direct`` where the
    workload has one), or ``phases`` (a ``--phases`` string) choose what is measured;
    none: the workload's default. ``params`` are the workload's own (questions, ...)."""
    from ..bench import make_workload
    from ..bench.runner import run_workload as run
    from ..bench.targets import DirectTarget, EngineTarget

    workload = make_workload(name, smoke=smoke, **params)
    if targets is None and configs is not None:
        configs = {"phase0": StackConfig(), **configs}
        targets = ([DirectTarget()] if workload.uses_direct else []) + \
            [EngineTarget(cfg, label) for label, cfg in configs.items()]
    return await run(workload, model, targets=targets, phases=phases, trials=trials,
                     progress=progress)


class Panel:
    """Phase checkboxes, key settings, workload picker, Run button, progress bar, plot.

    ``config()`` is the StackConfig for the current widget state; ``await run()`` runs it
    without clicking. ``base`` supplies every setting the panel does not show.

    Contract: one run at a time (a click or ``run()`` while one is going is refused, and the
    status line says so). A run's plot and summary, or its error with the traceback, replace
    the output area by setting ``output.outputs``: never by capturing display calls with
    ``with output:``, whose messages a front end routes by the request that caused them
    and drops once a button click's comm message is done.
    """

    def __init__(self, model: str = "mini", *, base: StackConfig | None = None,
                 smoke: bool = False, trials: int = 1, max_tokens: int | None = None,
                 out_dir: str | Path = "runs", on_done=None):
        import ipywidgets as W

        from ..stages.batcher import BatcherConfig
        from ..stages.breaker import BreakerPolicy
        from ..stages.model_cache import ModelCacheConfig
        from ..stages.retry import RetryPolicy

        self.model, self.max_tokens, self.out_dir, self.on_done = model, max_tokens, Path(out_dir), on_done
        b = base or StackConfig()
        self.base = b
        self.defaults = {key: b.find(cls) or cls() for key, cls in (
            ("batcher", BatcherConfig), ("model_cache", ModelCacheConfig), ("retry", RetryPolicy),
            ("breaker", BreakerPolicy), ("framer", FramerConfig))}
        d = self.defaults
        # Room for the longest label ("cache budget GiB (0: none)") and a slider of usable length.
        style, wide = {"description_width": "190px"}, {"layout": W.Layout(width="430px")}
        kw = {"style": style, **wide}
        self.phase = {p: W.Checkbox(value=p in b.enabled, description=p, indent=False,
                                    layout=W.Layout(width="auto", margin="0 18px 0 0")) for p in PHASES}
        self.batch_window_ms = W.FloatSlider(value=d["batcher"].window_ms, min=0, max=10, step=0.5,
                                             description="batch window ms", **kw)
        self.cache_max_models = W.IntSlider(value=d["model_cache"].max_models, min=1, max=16,
                                            description="cache max models", **kw)
        budget = d["model_cache"].budget_bytes
        self.cache_budget_gib = W.FloatText(value=budget / GIB if budget else 0.0,
                                            description="cache budget GiB (0: none)", **kw)
        self.retry_attempts = W.IntSlider(value=d["retry"].attempts, min=1, max=10,
                                          description="retry attempts", **kw)
        self.codec = W.Dropdown(options=list(CODECS), value=d["framer"].codec, description="codec", **kw)
        self.coalesce_tokens = W.IntSlider(value=d["framer"].coalesce_tokens, min=1, max=32,
                                           description="coalesce tokens", **kw)
        self.workload = W.Dropdown(options=available_workloads(), value="baseline",
                                   description="workload", **kw)
        self.trials = W.IntSlider(value=trials, min=1, max=10, description="trials", **kw)
        self.smoke = W.Checkbox(value=smoke, description="smoke (few requests)", indent=False,
                                layout=W.Layout(width="auto"))
        self.run_button = W.Button(description="Run", button_style="primary", icon="play",
                                   tooltip="run the workload on the configuration above")
        self.progress = W.IntProgress(value=0, min=0, max=1, description="progress", **kw)
        self.rate = W.HTML(value="")
        self.status = W.HTML(value="")
        self.output = W.Output()
        self.settings = {"batching": [self.batch_window_ms],
                         "caching": [self.cache_max_models, self.cache_budget_gib],
                         "retry": [self.retry_attempts],
                         "framing": [self.codec, self.coalesce_tokens]}
        for p, box in self.phase.items():
            box.observe(lambda _change, p=p: self._sync_enabled(p), names="value")
            self._sync_enabled(p)
        self.run_button.on_click(self._on_click)
        self.doc: dict | None = None
        self.path: Path | None = None
        self.task: asyncio.Task | None = None
        self.running = False
        wrap = W.Layout(flex_flow="row wrap", align_items="center")
        self.widget = W.VBox([
            W.HTML(f"<b>krmlx</b> · model <code>{model}</code>"),
            W.HBox(list(self.phase.values()), layout=wrap),
            W.HBox([W.VBox([self.batch_window_ms, self.cache_max_models, self.cache_budget_gib]),
                    W.VBox([self.retry_attempts, self.codec, self.coalesce_tokens])], layout=wrap),
            W.HBox([self.workload, self.trials, self.smoke], layout=wrap),
            W.HBox([self.run_button, self.progress, self.rate], layout=wrap),
            self.status, self.output])
        self.widget.add_class("krmlx-panel")  # names for a browser (tests/test_lab.py) to find
        self.output.add_class("krmlx-panel-output")
        self.status.add_class("krmlx-panel-status")

    def _sync_enabled(self, phase: str) -> None:
        for w in self.settings[phase]:
            w.disabled = not self.phase[phase].value

    def config(self) -> StackConfig:
        """The StackConfig the widgets describe: checked phases on, with the shown settings
        replaced into ``base``'s stage configs (or the defaults), over ``base``'s worker."""
        d, on = self.defaults, {p for p, box in self.phase.items() if box.value}
        budget = self.cache_budget_gib.value
        return StackConfig.phases(
            batcher=replace(d["batcher"], window_ms=float(self.batch_window_ms.value)) if "batching" in on else None,
            model_cache=replace(d["model_cache"], max_models=int(self.cache_max_models.value),
                                budget_bytes=int(budget * GIB) if budget > 0 else None) if "caching" in on else None,
            retry=replace(d["retry"], attempts=int(self.retry_attempts.value)) if "retry" in on else None,
            breaker=d["breaker"] if "retry" in on else None,
            framer=replace(d["framer"], codec=self.codec.value,
                           coalesce_tokens=int(self.coalesce_tokens.value)) if "framing" in on else None,
        ).replace(worker=self.base.worker)

    async def run(self) -> dict:
        """Run the selected workload on ``config()`` (the direct baseline beside it where the
        workload has one), write the results file, show its plot and summary, call
        ``on_done``. Raises RuntimeError when a run is already going; any error of the run
        is shown in the panel (status line and traceback) and raised."""
        if self.running:
            self.refuse()
            raise RuntimeError("a panel run is already in progress")
        self.running = True
        self._set_busy(True)
        cfg, name = self.config(), self.workload.value
        self.status.value = f"running <b>{name}</b> with <code>{cfg.label}</code> ..."
        t0 = time.perf_counter()
        params = {"max_tokens": self.max_tokens} if self.max_tokens and accepts(name, "max_tokens") else {}
        try:
            doc = await run_workload(name, self.model, configs={cfg.label: cfg},
                                     progress=WidgetProgress(self.progress, self.rate),
                                     smoke=self.smoke.value, trials=int(self.trials.value), **params)
            from . import save_results

            self.doc = doc
            self.path = save_results(doc, self.out_dir, f"panel-{name}")
            self.show_result(doc)
        except Exception as e:
            self.status.value = (f"<span style='color:#b02a37'>failed: "
                                 f"{html.escape(type(e).__name__)}: {html.escape(str(e))}</span>")
            self.show_error(e)
            raise
        finally:
            self.running = False
            self._set_busy(False)
        self.status.value = f"done in {time.perf_counter() - t0:.1f} s · {html.escape(str(self.path))}"
        if self.on_done is not None:
            self.on_done(doc)
        return doc

    def show_result(self, doc: dict) -> None:
        """Replace the output area with this document's plot (overhead if it has one, else
        latency) and summary tables."""
        from . import export, plots

        fig = (plots.overhead(doc) if plots.summary_of(doc).get("overhead")
               else plots.latency_distributions(doc))
        png = base64.b64encode(export.png_bytes(fig)).decode("ascii")
        self.output.outputs = (
            {"output_type": "display_data", "metadata": {},
             "data": {"image/png": png, "text/plain": f"<{doc['config'].get('workload')} plot>"}},
            {"output_type": "display_data", "metadata": {},
             "data": {"text/html": summary_html(doc), "text/plain": f"summary of {self.path}"}})

    def show_error(self, exc: BaseException) -> None:
        """Replace the output area with ``exc`` and its traceback, as a cell shows one."""
        self.output.outputs = ({"output_type": "error", "ename": type(exc).__name__,
                                "evalue": str(exc),
                                "traceback": traceback.format_exception(exc)},)

    def refuse(self) -> None:
        """Say on the status line that a click (or ``run()``) came while a run was going."""
        note = "<span style='color:#b02a37'>busy: one run at a time, this one was not started</span>"
        if note not in self.status.value:
            self.status.value = f"{self.status.value} · {note}"

    def _set_busy(self, busy: bool) -> None:
        b = self.run_button
        b.disabled = busy
        b.description, b.icon = ("Running ...", "hourglass-half") if busy else ("Run", "play")

    def _on_click(self, _button) -> None:
        if self.running:
            self.refuse()
            return

        async def guarded():
            try:
                await self.run()
            except Exception:  # noqa: BLE001 - shown in the panel; a click has no caller
                pass

        self.task = asyncio.ensure_future(guarded())

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def summary_html(doc: dict) -> str:
    """The panel's summary of one results document: engines and, where present, the
    overhead vs direct with 95% CIs, as HTML tables."""
    from . import export, plots

    summary, cfg = plots.summary_of(doc), doc.get("config", {})
    parts = [f"<p><b>{html.escape(str(cfg.get('workload')))}</b> · {len(doc.get('records', []))} "
             f"records · {cfg.get('trials')} trial(s){' · smoke' if cfg.get('smoke') else ''}</p>"]
    for name in ("targets", "overhead"):
        if summary.get(name):
            if name == "overhead":
                parts.append(f"<p>{html.escape(OVERHEAD_CAPTION)}</p>")
            table = export.display_table(name, summary[name])
            parts.append(table.to_html(index=False, border=0, float_format=lambda x: f"{x:.4g}"))
    return "\n".join(parts)


def make_panel(model: str = "mini", on_done=None, **options) -> Panel:
    """A :class:`Panel` for ``model``; ``options`` as for Panel (base, smoke, trials, ...)."""
    return Panel(model, on_done=on_done, **options)
