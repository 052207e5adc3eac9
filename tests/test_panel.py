"""The widget panel's contract (krmlx.report.widgets): a run's plot and summary, or its
error, replace the Output's ``outputs`` (no display capture, which a front end drops for a
button click's comm message); one run at a time, refused on the status line; the progress
rate is count / elapsed, here and in the notebooks' tqdm bars. The browser side is
tests/test_lab.py."""

from __future__ import annotations

import asyncio
import base64

import pytest

from krmlx.report import widgets


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def click(panel):
    """What the Run button does in a kernel: a task on the running loop."""
    async def go():
        panel.run_button.click()
        if panel.task is not None:
            await panel.task
    asyncio.run(go())


def test_widget_progress_rate_is_count_over_elapsed():
    import ipywidgets as W

    bar, label, clock = W.IntProgress(), W.HTML(), Clock()
    p = widgets.WidgetProgress(bar, label, clock=clock)
    p.total = 300
    clock.t += 4.4  # engines starting: nothing done yet
    for _ in range(300):  # then every record in a burst
        clock.t += 0.002
        p.update(1)
    assert (bar.value, bar.max) == (300, 300)
    assert p.rate() == pytest.approx(300 / 5.0)
    assert label.value == "300/300 · 5.0 s · 60.0 req/s"


def test_notebook_progress_bar_shows_count_over_elapsed(monkeypatch):
    """krmlx.report.run's tqdm bar: a burst of records after seconds of start-up reads as
    count / elapsed, not as the start-up's rate (the smoothed default showed 4.44s/req)."""
    import krmlx.report as report

    shown = []

    async def fake_run(workload, model, *, progress, **options):
        clock = Clock()
        progress._time, progress.start_t, progress.last_print_t = clock, clock.t, clock.t
        progress.total = 300
        clock.t += 4.4
        for _ in range(300):
            clock.t += 0.0002
            progress.update(1)
        clock.t += 0.5
        shown.append(progress.format_meter(**progress.format_dict))
        return {}

    monkeypatch.setattr(widgets, "run_workload", fake_run)
    asyncio.run(report.run("baseline", "tiny"))
    assert "300/300" in shown[0] and f"{300 / 4.96:.2f}req/s" in shown[0], shown[0]


def test_a_failed_run_shows_its_error_in_the_panel(monkeypatch, tmp_path):
    async def boom(*_args, **_kwargs):
        raise ValueError("no such model: nope")

    monkeypatch.setattr(widgets, "run_workload", boom)
    p = widgets.make_panel("tiny", out_dir=tmp_path)
    click(p)  # a click has no caller: the error goes to the panel, not to a log
    (out,) = p.output.outputs
    assert out["output_type"] == "error" and out["ename"] == "ValueError"
    assert "no such model: nope" in out["evalue"] and "Traceback" in "".join(out["traceback"])
    assert "failed: ValueError" in p.status.value
    assert not p.running and not p.run_button.disabled and p.run_button.description == "Run"
    with pytest.raises(ValueError):  # run() from code also raises
        asyncio.run(p.run())


def test_a_second_run_while_one_is_going_is_refused(monkeypatch, tmp_path):
    p = widgets.make_panel("tiny", out_dir=tmp_path)
    seen = {}

    async def slow(*_args, **_kwargs):  # the panel catches errors: observe, check outside
        seen["busy_button"] = (p.run_button.disabled, p.run_button.description)
        first = p.task
        p.run_button.click()  # clicked again while running
        seen["status"], seen["same_task"] = p.status.value, p.task is first
        try:
            await p.run()
        except RuntimeError as e:
            seen["run_error"] = str(e)
        raise OSError("ended here")

    monkeypatch.setattr(widgets, "run_workload", slow)
    click(p)
    assert seen["busy_button"] == (True, "Running ...")
    assert "busy: one run at a time" in seen["status"] and seen["same_task"]
    assert seen["run_error"] == "a panel run is already in progress"
    assert not p.running and not p.run_button.disabled and "ended here" in p.status.value


def test_labels_and_sliders_have_room():
    p = widgets.make_panel("tiny")
    for w in (p.batch_window_ms, p.cache_max_models, p.cache_budget_gib, p.retry_attempts,
              p.codec, p.coalesce_tokens, p.workload, p.trials, p.progress):
        assert w.style.description_width == "190px" and w.layout.width == "430px", w.description
        assert len(w.description) * 7 <= 190, w.description  # ~7 px a character at the default font


@pytest.mark.slow
def test_every_click_replaces_the_plot_and_summary(tiny_path, tmp_path):
    p = widgets.make_panel("tiny", smoke=True, max_tokens=4, out_dir=tmp_path)
    images = []
    for _ in range(2):
        click(p)
        png, summary = p.output.outputs  # replaced, not appended to
        assert png["output_type"] == "display_data"
        images.append(base64.b64decode(png["data"]["image/png"]))
        assert images[-1].startswith(b"\x89PNG")
        assert "<table" in summary["data"]["text/html"] and "direct" in summary["data"]["text/html"]
        assert "done in" in p.status.value and p.path.exists()
    assert images[0] != images[1], "the second run's plot is a new one"
    assert p.rate.value.startswith(f"{p.progress.value}/{p.progress.max} · ")
