"""Results safety and security (issue 8, items 6 and 7), with the real CLI, worker and tiny model.

Results: a run interrupted mid-way (SIGINT to ``python -m krmlx bench``, or a worker
killed under the runner) leaves a readable results file holding every completed record,
and a results write that fails half-way leaves the previous file intact and no temp file.

Security: the worker opens no network socket; loading a model folder never executes
Python code from it unless the caller asks (``trust_remote_code``); the frame size limit
bounds the worker's memory against a huge frame.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from reliability_support import RawWorker, make_custom_code_model, run

from krmlx import load_questions
from krmlx.bench import results as results_mod
from krmlx.bench.results import read_results, write_results
from krmlx.bench.runner import Plan, Run
from krmlx.bench.targets import EngineTarget
from krmlx.engine import Engine
from krmlx.errors import ModelError, ResultsError
from krmlx.service import Call, unary
from krmlx.stack import StackConfig
from krmlx.types import Request
from krmlx.worker.client import WorkerClient
from krmlx.worker.protocol import call_frame


# -- results safety ------------------------------------------------------------------------
def test_sigint_mid_run_leaves_a_readable_partial_results_file(tmp_path, tiny_path):
    """SIGINT after some records: exit 130, a file with complete=false holding at least
    the records the progress bar had counted, every one of them whole; no worker left."""
    out = tmp_path / "runs"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "krmlx", "bench", "baseline", "--model", "tiny", "--smoke",
         "--phases", "none", "--max-tokens", "200", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        # Python turns SIGINT into KeyboardInterrupt only if it is not ignored at start,
        # and a test runner started in the background may pass SIGINT on ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = {"n": 0, "total": None}
    workers: set[int] = set()

    def watch_progress():  # tqdm writes "... | 3/12 [..." to stderr
        buf = b""
        while chunk := proc.stderr.read1(4096):
            buf = (buf + chunk)[-4096:]
            for n, total in re.findall(rb"(\d+)/(\d+) \[", buf):
                seen["n"], seen["total"] = max(seen["n"], int(n)), int(total)

    reader = threading.Thread(target=watch_progress, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while seen["n"] < 3:
            assert proc.poll() is None, f"the run ended early: {proc.returncode}"
            assert time.monotonic() < deadline, "no progress"
            try:
                workers.update(p.pid for p in psutil.Process(proc.pid).children(recursive=True))
            except psutil.Error:
                pass
            time.sleep(0.05)
        n_at_signal = seen["n"]
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    assert proc.returncode == 130, stdout
    path = Path(re.search(rb"results(?: \(partial\))?: (\S+)", stdout).group(1).decode())
    doc = read_results(path)
    assert doc["complete"] is False and doc["config"].get("interrupted") is True
    recs = doc["records"]
    assert n_at_signal <= len(recs) < seen["total"], (n_at_signal, len(recs), seen)
    for r in recs:  # every record is a whole completed request
        assert r["ok"] and r["output_tokens"] == len(r["output_ids"]) > 0 and r["e2e_ms"] > 0
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file
    assert workers and not any(psutil.pid_exists(p) and psutil.Process(p).status() !=
                               psutil.STATUS_ZOMBIE for p in workers), "a worker outlived the run"


def test_worker_killed_under_the_runner_records_the_error_and_the_file_reads(tmp_path, tiny_path):
    """The worker is SIGKILLed while the runner's 4th request is generating: that record
    says ok=false with the crash, the run goes on (the client restarts the worker), and
    the file written from the records reads back whole."""
    questions = load_questions()[0][:8]
    requests = [Request(q.question, max_tokens=40, id=q.id) for q in questions]

    async def go():
        sink: list[dict] = []
        async with Engine("tiny") as eng:
            async def killer():
                while len(sink) < 3:
                    await asyncio.sleep(0.002)
                base = (await eng.client.worker_stats())["tokens_out"]
                while (await eng.client.worker_stats())["tokens_out"] < base + 3:
                    await asyncio.sleep(0.002)
                os.kill(eng.client.pid, signal.SIGKILL)

            kill = asyncio.create_task(killer())
            # load_limit_cores=inf: no re-run of a "disturbed" trial, which would replace
            # the records this test is about (this machine is shared and busy)
            plan = Plan(trials=1, load_limit_cores=float("inf"))
            target = EngineTarget(name="phase0")
            target.engine, target.model = eng, "tiny"
            run_ = Run({"phase0": target}, plan, "kill", "tiny", sink, {})
            await run_.trials(lambda trial: run_.sequence(requests, trial))
            await kill
        return sink

    sink = run(go())
    path = write_results(tmp_path / "r.json", env={"test": True}, config={"workload": "kill"},
                         records=sink, summary={})
    doc = read_results(path)
    assert doc["records"] == json.loads(json.dumps(sink))
    failed = [r for r in doc["records"] if not r["ok"]]
    assert [r["request_id"] for r in failed] == [requests[3].id], failed
    assert failed[0]["error"].startswith("WorkerCrashed: ") and "code -9" in failed[0]["error"]
    assert failed[0]["finish_reason"] == "error"
    assert all(r["ok"] and r["output_tokens"] > 0 for r in doc["records"] if r is not failed[0])
    assert len(doc["records"]) == len(requests)


def test_results_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    old = {"env": {"n": 1}, "config": {}, "records": [{"ok": True, "x": i} for i in range(50)],
           "summary": {}}
    write_results(path, **old)
    before = path.read_bytes()

    # (1) serialization fails half-way (json.dump has written part of the temp file)
    with pytest.raises(TypeError):
        write_results(path, **{**old, "records": [*old["records"], {"bad": object()}]})
    # (2) interrupted after the temp file is complete, before the rename
    monkeypatch.setattr(results_mod.os, "replace",
                        lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        write_results(path, **old)
    monkeypatch.undo()
    assert path.read_bytes() == before and read_results(path)["records"] == old["records"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"], "temp files left"

    # (3) readers never see half a file: a reader thread races 40 rewrites
    big = {**old, "records": [{"ok": True, "payload": "x" * 200, "i": i} for i in range(3000)]}
    errors, reads, stop = [], [0], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                n = len(read_results(path)["records"])
                assert n in (50, 3000), n
                reads[0] += 1
            except (ResultsError, AssertionError) as e:
                errors.append(e)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(40):
            write_results(path, **(big if i % 2 == 0 else old))
    finally:
        stop.set()
        t.join()
    assert not errors, errors[:3]
    assert reads[0] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_soak_script_writes_a_readable_results_file(tmp_path, tiny_path):
    """benchmarks/soak.py end to end at a tiny size (no kills: the fault tests cover them)."""
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"),
         "--requests", "80", "--concurrency", "8", "--error-rate", "0.1", "--kills", "0",
         "--seed", "3", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    doc = read_results(out)
    counts = doc["summary"]["counts"]
    assert doc["complete"] is True and doc["config"]["workload"] == "soak"
    assert len(doc["records"]) == counts["requests"] == 80
    assert counts["completed"] + counts["failed"] == 80 and counts["never_ended"] == 0
    assert set(counts["failed_by_cause"]) <= {"injected_error"}
    assert doc["summary"]["latency"]["all"]["p99_ms"] > 0
    assert doc["summary"]["rss_mib"]["worker_after"] > 0
    assert "results:" in proc.stdout and "requests 80" in proc.stdout


# -- security ------------------------------------------------------------------------------
def test_worker_opens_no_socket_through_the_full_stack(tiny_path):
    """Through Engine with every phase (msgpack framing, batching, cache, retry): no
    network socket in the worker (or any process it starts) while it streams, after
    tokenize batches, or after a second model load. Only AF_UNIX would be tolerated."""

    def sockets(pid: int) -> list:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        return [(p.pid, c) for p in procs for c in p.net_connections(kind="all")
                if c.family != socket.AF_UNIX]

    async def go():
        found = []
        async with Engine("tiny", StackConfig.all()) as eng:
            pid = eng.client.pid
            found += sockets(pid)
            stream = eng.stream(Request("Tell me about sockets", max_tokens=200))
            await stream.__anext__()
            found += sockets(pid)  # mid-stream
            await stream.aclose()
            await asyncio.gather(*(eng.tokenize(f"text {i}") for i in range(30)))
            await eng.complete(Request("x", max_tokens=3, model="tiny@2"))
            found += sockets(pid)
        return found

    assert run(go()) == []


@pytest.mark.parametrize("layout", ["model_file", "auto_map"])
def test_loading_a_model_never_runs_its_code_unless_asked(layout, tmp_path, tiny_path):
    """A model folder whose config asks for custom code: loading it through the worker
    (trust_remote_code off by default) runs none of the folder's Python, answers with a
    clear error, and leaves the worker serving. The positive control shows the folder's
    code WOULD run when trusted, so the marker's absence means something."""
    folder = tmp_path / f"custom-{layout}"
    marker = make_custom_code_model(folder, tiny_path, layout)

    async def go():
        async with WorkerClient() as c:
            with pytest.raises(ModelError) as err:  # the promised type, not a bare WorkerError
                await unary(c, Call("load_model", {}, str(folder)))
            executed = marker.exists()
            await unary(c, Call("load_model", {}, "tiny"))  # still serving, stream in sync
            ids = await unary(c, Call("tokenize", {"text": "hello"}, "tiny"))
            trusted = None
            if layout == "model_file":
                trusted = await unary(c, Call("load_model", {"trust_remote_code": True}, str(folder)))
            return err.value, executed, ids, trusted, await c.ping()

    err, executed, ids, trusted, ping = run(go())
    assert not executed, "loading the folder executed its code"
    assert err.code == "model_error"
    assert {"model_file": "trust_remote_code", "auto_map": "custom code"}[layout] in str(err)
    assert ids and ping["pid"]
    if layout == "model_file":  # trusted explicitly: mlx-lm runs the folder's model file
        assert trusted["model"] == str(folder) and marker.exists()
    else:  # mlx-lm does not forward trust_remote_code to the tokenizer; transformers would run it
        code = ("import sys; from transformers import AutoTokenizer\n"
                "try: AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
                "except Exception: pass\n")
        subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True,
                       timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert marker.exists(), "positive control: trusted, the folder's code should run"


def test_frame_limit_bounds_worker_memory_against_a_50_mb_frame():
    """50 MB JSON line to a worker with a 1 MB limit: one frame_too_large error (id -1),
    peak RSS grows by well under the frame (< 8 MiB, where buffering it would cost
    >= 50 MiB), the stream stays in sync and the worker keeps serving."""
    size = 50 * 2**20
    with RawWorker("json", max_frame_bytes=2**20) as w:
        before = w.request(1, "stats")
        rss0 = psutil.Process(w.pid).memory_info().rss
        head = b'{"v":1,"id":2,"kind":"call","method":"ping","params":{"pad":"'
        for chunk in [head, *(b"a" * 2**20 for _ in range(size // 2**20)), b'"}}\n']:
            w.write(chunk)
        w.send(call_frame(3, "ping"))
        pong = w.result(3, timeout=60)
        after = w.request(4, "stats")
        rss1 = psutil.Process(w.pid).memory_info().rss
        errors = [f for f in w.snapshot() if f["kind"] == "error"]
    assert pong["kind"] == "result"
    assert [(f["id"], f["code"]) for f in errors] == [(-1, "frame_too_large")]
    assert not w.frames_for(2), "the oversized ping was answered"
    peak_growth_mib = (after["rss_max_kib"] - before["rss_max_kib"]) / 1024
    assert peak_growth_mib < 8, f"peak RSS grew {peak_growth_mib:.1f} MiB"
    assert (rss1 - rss0) / 2**20 < 8
    assert after["bad_frames"] == before["bad_frames"] + 1


def test_a_50_mb_msgpack_header_is_a_desync_and_nothing_is_buffered():
    """The same 50 MB as msgpack (a header over the 1 MB limit): the worker can't tell it
    from a corrupt header, so it buffers none of it, says so and exits (code 4)."""
    with RawWorker("msgpack", max_frame_bytes=2**20) as w:
        w.request(1, "stats")
        try:
            w.write((50 * 2**20).to_bytes(4, "big") + b"\x00" * 2**20)
        except BrokenPipeError:
            pass  # it left without reading the rest: what a desync should do
        code = w.proc.wait(timeout=30)
        errors = [f for f in w.snapshot() if f["kind"] == "error"]
    assert code == 4
    assert [(f["id"], f["code"]) for f in errors] == [(-1, "protocol_desync")]


def _results_file(path: Path, **overrides) -> Path:
    doc = {"schema": {"name": "krmlx.results", "version": 2}, "complete": True, "env": {},
           "config": {"workload": "baseline"}, "records": [
               {"target": "direct", "ok": True, "trial": 0, "request_id": str(i),
                "ttft_ms": 10.0 + i, "e2e_ms": 100.0 + i} for i in range(3)],
           "summary": {}}
    doc.update(overrides)
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("command", ["compare", "report"])
@pytest.mark.parametrize("bad, problem", [
    (lambda p: p.write_text('{"schema": {"name": "krmlx.results", "vers'), "not valid JSON"),
    (lambda p: p.write_text(json.dumps({"hello": "world"})), "not a krmlx results file"),
    (lambda p: p.write_text(json.dumps([1, 2])), "not a krmlx results file"),
    (lambda p: _results_file(p, summary=None), "'summary' must be a map"),
    (lambda p: _results_file(p, records="notalist"), "'records' must be a list"),
    (lambda p: _results_file(p, records=[1]), r"records\[0\] is not a map"),
], ids=["truncated", "foreign", "a-list", "summary-null", "records-not-a-list", "record-not-a-map"])
def test_cli_on_a_bad_results_file_says_one_line_and_exits_2(command, bad, problem, tmp_path):
    good = _results_file(tmp_path / "good.json")
    path = tmp_path / "bad.json"
    bad(path)
    argv = [good, path] if command == "compare" else [path, "--out", tmp_path / "report"]
    p = subprocess.run([sys.executable, "-m", "krmlx", command, *map(str, argv)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert str(path) in lines[0] and re.search(problem, lines[0]), lines[0]


def test_compare_of_a_partial_file_with_no_records_is_one_line(tmp_path):
    good = _results_file(tmp_path / "good.json")
    partial = _results_file(tmp_path / "partial.json", records=[], complete=False)
    p = subprocess.run([sys.executable, "-m", "krmlx", "compare", str(good), str(partial)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "no request records to compare" in p.stderr, p.stderr
    assert p.stderr.startswith(f"krmlx compare: {partial}:")
    assert "Traceback" not in p.stderr and "KeyError" not in p.stderr


def test_compressed_results_read_like_plain_ones_and_old_ratios_are_renamed(tmp_path):
    """A ``.json.gz`` results file reads as its ``.json`` twin (the report finds both in a
    folder); a truncated one is a ResultsError, not a crash; a schema-3 summary's ratio
    columns come back under the names that say their direction."""
    import gzip

    from krmlx.bench.results import read_results
    from krmlx.errors import ResultsError
    from krmlx.report import load_results

    ratios = [{"target": "b", "base": "a", "concurrency": 4, "throughput_ratio": 0.8,
               "throughput_ratio_ci_low": 0.7, "ttft_p50_ratio": 2.0}]
    path = write_results(tmp_path / "r.json", env={}, config={}, records=[{"ok": True}],
                         summary={"ratios": ratios})
    doc = json.loads(path.read_text())
    doc["schema"]["version"] = 3
    gz = tmp_path / "old.json.gz"
    gz.write_bytes(gzip.compress(json.dumps(doc).encode()))
    row = read_results(gz)["summary"]["ratios"][0]
    assert row["tok_s_target_over_base"] == 0.8 and row["tok_s_target_over_base_ci_low"] == 0.7
    assert row["ttft_p50_target_over_base"] == 2.0 and "throughput_ratio" not in row
    assert read_results(path)["summary"]["ratios"][0]["throughput_ratio"] == 0.8  # v4 untouched
    assert {Path(d["_source"]).name for d in load_results(tmp_path)} == {"r.json", "old.json.gz"}
    (tmp_path / "cut.json.gz").write_bytes(gz.read_bytes()[:40])
    with pytest.raises(ResultsError, match="cut.json.gz"):
        read_results(tmp_path / "cut.json.gz")
