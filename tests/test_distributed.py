"""The worker as an MLX distributed group: 2 ranks, ring backend over loopback, tiny model.

Greedy outputs equal the single-process worker's (both launchers); cancel, stages and
faults work unchanged; a rank that dies fails every pending call with WorkerCrashed within
seconds, every rank is reaped, and the next call brings the group back.
"""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from reliability_support import make_custom_code_model

from krmlx.engine import Engine
from krmlx.errors import BadRequest, ConfigError, ModelError, WorkerCrashed
from krmlx.questions import load_questions
from krmlx.stack import StackConfig
from krmlx.types import Request
from krmlx.worker.group import GROUP_BROKEN_EXIT_CODE
from krmlx.worker.launch import DistributedConfig

TWO = DistributedConfig(2)
QUESTIONS = [q.question for q in load_questions()[0][:4]]


def run(coro, timeout_s: float = 120):
    # a group out of step hangs in a collective: fail the test instead of hanging it
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


def ranks_of(engine) -> list[psutil.Process]:
    """The worker processes of an engine's group (launcher excluded)."""
    launcher = psutil.Process(engine.client.pid)
    return [p for p in launcher.children(recursive=True)
            if "krmlx.worker" in " ".join(p.cmdline()) and "--distributed" in p.cmdline()]


async def outputs(model, config, prompts, max_tokens=12):
    async with Engine(model, config) as eng:
        return [(await eng.complete(Request(p, max_tokens=max_tokens))).token_ids for p in prompts]


@pytest.fixture(scope="module")
def reference(tiny_path):
    return run(outputs(str(tiny_path), StackConfig(), QUESTIONS))


def test_two_ranks_match_one_process(tiny_path, reference):
    assert run(outputs(str(tiny_path), StackConfig.phases(distributed=TWO), QUESTIONS)) == reference


def test_mlx_launch_matches_one_process_and_leaves_no_temp_files(tiny_path, reference, tmp_path,
                                                                  monkeypatch):
    """mlx.launch writes each rank's pidfile with mktemp and leaves it: the client gives the
    group a temp folder of its own and removes it when the group ends."""
    import tempfile

    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where the launcher's mktemp would write
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    cfg = StackConfig.phases(distributed=DistributedConfig(2, launcher="mlx.launch"))
    assert run(outputs(str(tiny_path), cfg, QUESTIONS)) == reference
    assert list(tmp_path.iterdir()) == []


def test_group_with_all_phases_matches(tiny_path, reference):
    # framing switches the wire to msgpack: fine with krmlx's launcher (rank 0 holds the pipes)
    assert run(outputs(str(tiny_path), StackConfig.all(distributed=TWO), QUESTIONS)) == reference


def test_cancel_keeps_ranks_in_step_and_probe_reports(tiny_path, reference):
    async def go():
        async with Engine(str(tiny_path), StackConfig.phases(distributed=TWO)) as eng:
            assert eng.client.ready["ranks"] == 2 and eng.client.ready["backend"] == "ring"
            stream = eng.stream(Request(QUESTIONS[0], max_tokens=200))
            async for _ in stream:
                break  # stop after the first chunk: the client cancels, rank 0 stops the others
            await stream.aclose()
            # the group still serves, in step: the next answers are the reference ones
            again = [(await eng.complete(Request(q, max_tokens=12))).token_ids for q in QUESTIONS[:2]]
            probe = await eng.call("group_probe", {"hidden": 128, "iters": 5})
            stats = await eng.client.worker_stats()
            return again, probe, stats

    again, probe, stats = run(go())
    assert again == reference[:2]
    assert probe["ranks"] == 2 and probe["allsum_scalar_us"] > 0 and probe["allsum_hidden_us"] > 0
    g = stats["group"]
    assert g["ranks"] == 2 and g["steps"] >= 2 * 12 and g["commands"] >= 4


def test_sampling_agrees_across_ranks(tiny_path):
    # Sampling with temperature: every rank must draw the same token, so a seeded group
    # run equals a one-process run with that seed; without a seed rank 0 draws one, shares
    # it and reports it (the run then equals a one-process run with the reported seed).
    def req(seed=None):
        return Request(QUESTIONS[0], max_tokens=12, temperature=1.0, seed=seed)

    async def go():
        async with Engine(str(tiny_path), StackConfig.phases(distributed=TWO)) as eng:
            free = await eng.complete(req())
            seeded = await eng.complete(req(7))
        async with Engine(str(tiny_path)) as one:
            again = await one.complete(req(free.extra["seed"]))
            seeded_one = await one.complete(req(7))
        return free, seeded, again, seeded_one

    free, seeded, again, seeded_one = run(go())
    assert seeded.token_ids == seeded_one.token_ids
    assert free.token_ids == again.token_ids


@pytest.mark.parametrize("victim", ["follower", "rank0"])
def test_dead_rank_fails_calls_fast_and_group_restarts(tiny_path, reference, victim):
    async def go():
        async with Engine(str(tiny_path), StackConfig.phases(distributed=TWO)) as eng:
            ranks = ranks_of(eng)
            assert len(ranks) == 2
            lead = eng.client.ready["pid"]
            target = next(p for p in ranks if (p.pid == lead) == (victim == "rank0"))
            stream = eng.stream(Request(QUESTIONS[0], max_tokens=400))
            first = await stream.__anext__()
            # the group was generating this question's greedy output when the rank died
            assert (first.index, first.token_id) == (0, reference[0][0])
            t0 = time.monotonic()
            os.kill(target.pid, signal.SIGKILL)
            with pytest.raises(WorkerCrashed):
                async for _ in stream:
                    pass
            waited = time.monotonic() - t0
            gone = psutil.wait_procs(ranks, timeout=5)[1]
            # the next call restarts the group (and reloads the model)
            after = (await eng.complete(Request(QUESTIONS[0], max_tokens=12))).token_ids
            return waited, gone, after, eng.client.stats["restarts"]

    waited, still_alive, after, restarts = run(go())
    assert waited < 5, f"WorkerCrashed took {waited:.1f} s"
    assert not still_alive, f"ranks not reaped: {still_alive}"
    assert after == reference[0] and restarts == 1


def test_rank0_leaves_itself_when_a_peer_dies_mid_generation(tiny_path, reference):
    # the launcher is stopped, so it cannot take the group down: rank 0's own collective
    # fails ("connection to a peer was lost") and rank 0 must leave (WorkerCrashed), not
    # answer with an error frame that tells the engine the group can go on
    async def go():
        async with Engine(str(tiny_path), StackConfig.phases(distributed=TWO)) as eng:
            launcher = psutil.Process(eng.client.pid)
            lead = eng.client.ready["pid"]
            follower = next(p for p in ranks_of(eng) if p.pid != lead)
            folder = psutil.Process(lead).environ()["KRMLX_GROUP_FOLDER"]
            stream = eng.stream(Request(QUESTIONS[0], max_tokens=400))
            await stream.__anext__()
            launcher.suspend()
            try:
                os.kill(follower.pid, signal.SIGKILL)
                with pytest.raises(WorkerCrashed):
                    async for _ in stream:
                        pass
            finally:
                with contextlib.suppress(psutil.NoSuchProcess):  # the client may have killed it
                    launcher.resume()
            # the launcher was SIGKILLed, yet its temp folder (the ring hostfile) is gone
            return (await eng.complete(Request(QUESTIONS[0], max_tokens=12))).token_ids, folder

    after, folder = run(go())
    assert after == reference[0]
    assert not os.path.exists(folder), f"{folder} left behind"


def test_group_worker_exits_on_a_failure_krmlx_did_not_raise():
    # the race of a dead follower: rank 0's collective raises before the launcher kills it;
    # a failure krmlx raised on purpose (the ranks are in step) is still an error frame
    code = textwrap.dedent("""
        import types
        from krmlx.errors import BadRequest
        from krmlx.worker.server import Worker
        w = Worker(1, group=object())
        w._job_failed(types.SimpleNamespace(fid=7), BadRequest("probe: a bad parameter"))
        w._job_failed(types.SimpleNamespace(fid=8), RuntimeError("[ring] connection to a peer was lost"))
        print("still running")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    frames = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == GROUP_BROKEN_EXIT_CODE, proc.stderr
    assert [(f["id"], f["kind"], f["code"]) for f in frames] == [(7, "error", "bad_request")]
    assert "connection to a peer was lost" in proc.stderr


def test_idle_follower_waits_without_spinning_and_close_reaps_every_rank(tiny_path):
    async def go():
        eng = await Engine(str(tiny_path), StackConfig.phases(distributed=TWO)).start()
        lead = eng.client.ready["pid"]
        follower = next(p for p in ranks_of(eng) if p.pid != lead)
        before = sum(follower.cpu_times()[:2])
        await asyncio.sleep(1.0)  # idle: the follower waits on its doorbell pipe
        idle_cpu_s = sum(follower.cpu_times()[:2]) - before
        procs = [psutil.Process(eng.client.pid), *ranks_of(eng)]
        await eng.close()
        return idle_cpu_s, psutil.wait_procs(procs, timeout=5)[1]

    idle_cpu_s, still_alive = run(go())
    assert idle_cpu_s < 0.3, f"an idle follower used {idle_cpu_s:.2f} s of CPU in 1 s (spinning)"
    assert still_alive == []


def test_bad_configs_are_clear():
    with pytest.raises(ConfigError, match="json codec"):
        StackConfig.all(distributed=DistributedConfig(2, launcher="mlx.launch"))
    with pytest.raises(ConfigError, match="serial"):
        StackConfig.phases(scheduler="batched", distributed=TWO)
    with pytest.raises(ConfigError, match="hostfile"):
        DistributedConfig(2, hostfile="/etc/hostname")
    with pytest.raises(ConfigError, match="ranks"):
        DistributedConfig(0)
    with pytest.raises(ConfigError, match="backend"):
        DistributedConfig(2, backend="tcp")
    with pytest.raises(ConfigError, match="DistributedConfig"):
        StackConfig.phases(distributed={"ranks": 2})


def test_probe_on_one_process_is_a_bad_request(tiny_path):
    async def go():
        async with Engine(str(tiny_path)) as eng:
            await eng.call("group_probe", {})

    with pytest.raises(BadRequest, match="not a distributed group"):
        run(go())


def test_nccl_load_path_matches_plain_load(tiny_path):
    # the NCCL branch of load_sharded (no CPU-stream barrier) on a one-process group
    import mlx.core as mx

    from krmlx import gen
    from krmlx.models import load, load_sharded

    ids = [5, 6, 7, 8]
    outs = []
    for model, tok in (load(tiny_path), load_sharded(tiny_path, mx.distributed.init(), "nccl")):
        outs.append([t for t, _ in gen.iter_tokens(model, tok, ids, max_tokens=8)])
    assert outs[0] == outs[1] and len(outs[0]) > 0


@pytest.mark.parametrize("backend", ["ring", "nccl"])
def test_sharded_load_runs_no_code_from_the_folder(backend, tmp_path, tiny_path):
    """Both tensor-parallel load paths refuse a folder whose tokenizer names custom code
    (mlx-lm's sharded_load would trust it by default): ModelError, and the folder's code
    never ran."""
    import mlx.core as mx

    from krmlx.models import load_sharded

    folder = tmp_path / "custom"
    marker = make_custom_code_model(folder, tiny_path, "tokenizer_code")
    with pytest.raises(ModelError, match="custom code"):
        load_sharded(folder, mx.distributed.init(), backend)
    assert not marker.exists(), "loading the folder executed its code"


def test_a_group_of_two_refuses_a_model_that_names_custom_code(tmp_path, tiny_path):
    folder = tmp_path / "custom"
    marker = make_custom_code_model(folder, tiny_path, "tokenizer_code")

    async def go():
        async with Engine(str(tiny_path), StackConfig.phases(distributed=TWO)) as eng:
            with pytest.raises(ModelError):
                await eng.call("load_model", {}, str(folder))
            return await eng.complete(Request(QUESTIONS[0], max_tokens=4))

    done = run(go())
    assert not marker.exists(), "a rank executed the folder's code"
    assert done.usage.output_tokens == 4  # the group still serves
