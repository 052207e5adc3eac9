"""The notebooks in a real JupyterLab in a real browser.

``./dev lab`` starts JupyterLab in the background on a free port (smoke mode, a temporary
``KRMLX_RUNS``, user settings and workspaces in a temporary folder); headless Chromium,
driven by Playwright, double-clicks ``notebooks/01_baseline.py`` in the file browser (it must
open as a notebook), runs all cells, clicks the panel's Run button and waits for a new plot
in the panel; no cell may show an error. Saving then writes the outputs into the git-ignored
``.ipynb`` only: ``git status`` of notebooks/ stays clean and the ``.py`` is unchanged.

Screenshots (the page, and the panel alone) go to the test's temporary folder; with
``KRMLX_SCREENSHOT_OUT=PATH`` the panel's is also written to PATH (README: docs/panel.png).
At the end JupyterLab, its kernels and Chromium are stopped and checked gone.
Skips only where Chromium is not installed (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "01_baseline.py"
CHROMIUM = next((c for c in ("/usr/bin/chromium", shutil.which("chromium"),
                             shutil.which("chromium-browser")) if c and Path(c).exists()), None)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Test-only user settings: every cell in the DOM (no windowing), no autosave racing the save.
SETTINGS = {"notebook-extension/tracker": {"windowingMode": "none"},
            "docmanager-extension/plugin": {"autosave": False}}

needs_chromium = pytest.mark.skipif(CHROMIUM is None,
                                    reason="chromium is not installed (Debian: apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def tree(pid: int) -> list[psutil.Process]:
    """``pid`` and its descendants (kernels run in sessions of their own, but are children)."""
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop(procs: list[psutil.Process], first: int = signal.SIGTERM, grace_s: float = 20) -> list:
    """Signal ``procs`` (the first one only, when it is the server: it shuts its kernels down),
    then kill whatever is left after ``grace_s``; returns those that would not die."""
    for p in procs[:1]:
        try:
            p.send_signal(first)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(alive, timeout=5)
    return alive


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """``./dev lab`` in the background; yields its URL, token, API base and process."""
    tmp = tmp_path_factory.mktemp("lab")
    settings = tmp / "user-settings"
    for name, values in SETTINGS.items():
        f = settings / "@jupyterlab" / f"{name}.jupyterlab-settings"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(values))
    ipynb = NOTEBOOK.with_suffix(".ipynb")
    kept = ipynb.read_bytes() if ipynb.exists() else None  # put back as it was at the end
    env = {**os.environ, "KRMLX_SMOKE": "1", "KRMLX_RUNS": str(tmp / "runs"),
           "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"),
           "JUPYTER_RUNTIME_DIR": str(tmp / "runtime")}
    env.pop("KRMLX_LAB_PORT", None)
    url_file, log = tmp / "url.txt", tmp / "lab.log"
    with log.open("wb") as out:
        # Checkpoints (copies with outputs) in the temporary folder, not in notebooks/.
        proc = subprocess.Popen([str(ROOT / "dev"), "lab", "--port", str(free_port()), "--no-browser",
                                 "--url-file", str(url_file),
                                 f"--FileCheckpoints.checkpoint_dir={tmp / 'checkpoints'}"],
                                cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"./dev lab exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"JupyterLab did not come up:\n{log.read_text()[-3000:]}"
            if url_file.exists():
                url = url_file.read_text().strip()
                base, token = url.split("/lab/")[0], url.split("token=")[1]
                try:
                    get_json(f"{base}/api/status?token={token}")
                    break
                except OSError:
                    pass
            time.sleep(0.5)
        assert f"[dev] JupyterLab (Ctrl-C stops it): {url}" in log.read_text()
        yield {"url": url, "base": base, "token": token, "proc": proc, "tmp": tmp, "log": log}
    finally:
        procs = tree(proc.pid)
        alive = stop(procs)
        if kept is None:
            ipynb.unlink(missing_ok=True)
        else:
            ipynb.write_bytes(kept)
        assert not alive, f"left running: {[p.pid for p in alive]}"
        assert not [p for p in procs if p.is_running()], "JupyterLab or a kernel is still running"


def kernels(lab) -> list[dict]:
    return get_json(f"{lab['base']}/api/kernels?token={lab['token']}")


def wait_for(what: str, check, timeout_s: float, every_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s: {what}"
        time.sleep(every_s)


# In the page: the state of the open notebook's code cells, and the text of every output
# shown on stderr (JupyterLab renders tracebacks with that mime type too).
CELLS_JS = """() => {
  const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
  if (!nb) return null;
  const prompts = [...nb.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]
    .map(p => p.textContent.trim());
  const stderr = [...nb.querySelectorAll(
      '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
    .map(o => o.textContent);
  return {prompts, stderr};
}"""


def git_status() -> str | None:
    """``git status`` of notebooks/, untracked files included (None outside a checkout)."""
    git = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", "notebooks"],
                         cwd=ROOT, capture_output=True, text=True)
    return git.stdout if git.returncode == 0 else None


def is_error(text: str) -> bool:
    return "Traceback" in text or "Error" in text.split("\n", 1)[0]


def test_dev_lab_refuses_a_port_in_use():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([str(ROOT / "dev"), "lab", "--port", str(port), "--no-browser"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and f"port {port} on 127.0.0.1 is in use" in r.stderr, r.stderr


@pytest.mark.slow
@needs_chromium
def test_notebook_runs_and_panel_shows_new_plot_in_chromium(lab, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    py_before, git_before = NOTEBOOK.read_bytes(), git_status()
    shots = {"page": tmp_path / "lab.png", "panel": tmp_path / "panel.png"}
    profile = tmp_path / "chromium-profile"
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1400, "height": 1000})
        chromium = [p for p in psutil.process_iter(["cmdline"])
                    if str(profile) in " ".join(p.info["cmdline"] or [])]
        try:
            page = browser.pages[0] if browser.pages else browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(lab["url"])
            item = page.locator(".jp-DirListing-item", has_text=NOTEBOOK.name)
            item.dblclick()
            nb = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
            expect(nb.locator(".jp-CodeCell").first).to_be_visible()
            assert page.locator(".jp-FileEditor:visible").count() == 0, "the .py opened as text"

            # The kernel is this project's venv Python, started by the server.
            wait_for("a kernel, idle", lambda: any(k["execution_state"] == "idle" for k in kernels(lab)), 90)
            kernel_cmds = [p.cmdline() for p in tree(lab["proc"].pid)[1:]
                           if "ipykernel_launcher" in " ".join(p.cmdline())]
            assert kernel_cmds and all(Path(c[0]).parent == Path(sys.executable).parent
                                       for c in kernel_cmds), kernel_cmds

            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

            def ran():
                s = page.evaluate(CELLS_JS)
                errors = [t for t in s["stderr"] if is_error(t)]
                assert not errors, "a cell failed:\n" + "\n---\n".join(errors)[-4000:]
                done = s["prompts"] and all(p[1:-2].isdigit() for p in s["prompts"])
                return done and s
            state = wait_for("every cell executed", ran, 150, every_s=1)
            import jupytext

            code_cells = [c for c in jupytext.read(NOTEBOOK).cells if c.cell_type == "code"]
            assert len(state["prompts"]) == len(code_cells)

            panel = page.locator(".krmlx-panel")
            expect(panel).to_have_count(1)
            images = panel.locator(".krmlx-panel-output img")
            expect(images).to_have_count(1)  # the notebook's own panel.run()
            before = images.first.get_attribute("src")
            status_before = panel.locator(".krmlx-panel-status").inner_text()
            idle = panel.locator("button").filter(has_text=re.compile(r"^\s*Run\s*$"))
            button = idle.first
            button.scroll_into_view_if_needed()
            button.click()
            running = panel.locator("button", has_text="Running")
            expect(running).to_be_disabled(timeout=10_000)  # a second click is refused
            expect(idle).to_be_enabled(timeout=120_000)
            status = panel.locator(".krmlx-panel-status").inner_text()
            assert "done in" in status and status != status_before, status
            expect(images).to_have_count(1)
            after = images.first.get_attribute("src")
            assert after.startswith("data:image/png") and after != before, "the plot did not change"
            expect(panel.locator(".krmlx-panel-output table").first).to_be_visible()
            assert not [t for t in page.evaluate(CELLS_JS)["stderr"] if is_error(t)]

            panel.scroll_into_view_if_needed()
            panel.screenshot(path=str(shots["panel"]))
            page.screenshot(path=str(shots["page"]))
            if os.environ.get("KRMLX_SCREENSHOT_OUT"):
                out = Path(os.environ["KRMLX_SCREENSHOT_OUT"])
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shots["panel"], out)

            # Save: the outputs go to the git-ignored .ipynb; the tracked .py is unchanged.
            ipynb = NOTEBOOK.with_suffix(".ipynb")
            mtime = ipynb.stat().st_mtime if ipynb.exists() else 0
            nb.locator(".jp-Cell").first.click()
            page.keyboard.press("Control+s")
            wait_for("the .ipynb saved", lambda: ipynb.exists() and ipynb.stat().st_mtime > mtime, 30)
            time.sleep(1)  # the paired .py is written in the same save
            assert NOTEBOOK.read_bytes() == py_before, "saving changed the .py"
            assert "image/png" in ipynb.read_text(), "the outputs are not in the .ipynb"
            assert git_status() == git_before, f"saving changed git status:\n{git_status()}"
        finally:
            browser.close()
    alive = stop(chromium, grace_s=10)
    assert not alive, f"chromium left running: {[p.pid for p in alive]}"
