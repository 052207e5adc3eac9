"""Fuzzing a LIVE worker (issue 8, item 3): bad frames on its stdin while it streams.

The worker is spawned here with ``subprocess`` (``python -m krmlx.worker --config JSON``,
codec C, 65536-byte frames), so the test controls every byte on its stdin. Over 1000 bad
frames (random bytes, truncated frames, oversized frames, type-confused envelopes and
params, frames of the wrong kind, acks for streams that don't exist) are written while
five well-formed greedy ``generate`` streams run on the loaded tiny model; the streams
must produce exactly the tokens of a clean run, every bad frame must get its answer,
and the worker must still answer ``ping`` and show no leaked stream at the end.

What the protocol guarantees (krmlx.worker.protocol / server), and so what is asserted:

- A frame that can't be decoded, or whose envelope is invalid (not a map, wrong ``v``,
  unknown ``kind``, non-int ``id``), is answered with ONE ``error`` frame whose ``id`` is
  the frame's own id when it had a usable int id, else -1 (code ``protocol_error``, or
  ``frame_too_large`` for a frame over the limit).
- A frame over ``max_frame_bytes`` is skipped, not buffered: one ``frame_too_large``
  error (id -1, even if the oversized frame was a well-formed call: it is never run).
- A decodable ``call`` that is wrong (unknown method, bad or unknown params, no or
  unknown model, wrong kind for a client) is answered with ONE ``error`` frame with its id.
- An ``ack`` for a stream that does not exist is ignored (no reply): acks are credit
  for live streams only and are never answered. In JSON, blank lines are ignored too.
- Nothing else happens: no bad frame reaches a handler, changes a model or a stream.

Framing limits of the fuzz, and why:

- JSON (newline-delimited): every bad frame is one line ending in ``\\n`` with no
  newline inside, so the decoder resynchronises at each newline whatever the garbage.
- msgpack (4-byte length + body): a length-prefixed stream can only resynchronise if
  the length headers are honest, so every bad frame carries a header equal to the
  number of body bytes that follow (the *body* is garbage, truncated or confused). An
  oversized header (over the limit) makes the decoder skip exactly that many bytes, so
  those frames (rare here) are followed by exactly that many filler bytes. A dishonest
  header (claims more bytes than are sent) would swallow the following frames: no
  framing can prevent that, and the fuzz does not send one.
- Ids: well-formed calls use ids below 1000; bad frames with an int id use unique ids
  from 10**6 up (or huge/negative ones), so every reply can be attributed. A bad frame
  reusing a live call's id would have its error routed to that call: ids are the
  client's to keep unique.
- Valid calls with destructive or unbounded effects are not "bad frames" and are not
  sent: ``shutdown``, ``unload_model`` of tiny, ``cancel`` of a live stream, a valid
  per-call ``faults`` plan (a crash or a huge delay is what the test hook is for),
  ``generate`` with a huge ``max_tokens``, or prompt ids outside the vocabulary
  (test_reliability_faults.py::test_out_of_vocabulary_prompt_ids_are_rejected).
"""

from __future__ import annotations

import collections
import random
import time

import msgpack
import orjson
import pytest
from reliability_support import RawWorker, run

from krmlx.errors import BadRequest, ProtocolError, WorkerError
from krmlx.service import Call, unary
from krmlx.worker.client import WorkerClient
from krmlx.worker.protocol import VERSION, call_frame, make_codec

LIMIT = 65536  # the worker's --max-frame-bytes here: oversized frames stay cheap to send
FUZZ_ID0 = 10**6
N_FUZZ = 1200
PROMPTS = ["Why is the sky blue?", "Tell me about bees", "What is a river?",
           "Explain seven bridges", "Where do clouds go?"]
GEN_PARAMS = {"max_tokens": 24, "temperature": 0.0}
ERROR_CODES_BY_ID = {"protocol_error", "bad_request", "unknown_method", "unknown_model",
                     "model_error", "not_found", "internal"}

# (method, params, model): decodable calls that must each get one error frame
BAD_CALLS = [
    ("generate", {"prompt": 5, "max_tokens": 3}, "tiny"),
    ("generate", {"prompt": "x", "max_tokens": "3"}, "tiny"),
    ("generate", {"prompt": "x", "max_tokens": 0}, "tiny"),
    ("generate", {"prompt": "x", "max_tokens": -7}, "tiny"),
    ("generate", {"prompt": "x", "max_tokens": True}, "tiny"),
    ("generate", {"prompt": "x", "max_tokens": 2.5}, "tiny"),
    ("generate", {"prompt": "   ", "max_tokens": 3}, "tiny"),
    ("generate", {"max_tokens": 3}, "tiny"),
    ("generate", {"prompt": "x"}, "tiny"),
    ("generate", {"prompt": "x", "max_tokens": 3, "temperature": "hot"}, "tiny"),
    ("generate", {"prompt": "x", "max_tokens": 3, "chat": "yes"}, "tiny"),
    ("generate", {"prompt": "x", "max_tokens": 3, "system": ["s"]}, "tiny"),
    ("generate", {"prompt": "x", "max_tokens": 3, "bogus": 1}, "tiny"),
    ("generate", {"prompt": "x", "max_tokens": 3}, 7),
    ("generate", {"prompt": "x", "max_tokens": 3}, None),
    ("generate", {"prompt": "x", "max_tokens": 3}, "ghost"),
    ("generate", {"prompt_ids": "abc", "max_tokens": 3}, "tiny"),
    ("generate", {"prompt_ids": ["a"], "max_tokens": 3}, "tiny"),  # fails on the compute thread
    ("generate", [1, 2], "tiny"),
    ("generate", "params", "tiny"),
    ("generate", {"prompt": "x", "max_tokens": 3, "faults": "boom"}, "tiny"),
    ("generate", {"prompt": "x", "max_tokens": 3, "faults": {"nope": 1}}, "tiny"),
    ("generate", {"prompt": "x", "max_tokens": 3, "faults": {"error_rate": {"*": 5}}}, "tiny"),
    ("tokenize", {"text": 5}, "tiny"),
    ("tokenize", {}, "tiny"),
    ("tokenize", {"text": "x", "add_special_tokens": "no"}, "tiny"),
    ("tokenize", {"text": "x"}, None),
    ("tokenize", {"text": "x"}, "ghost"),
    ("detokenize", {"ids": "x"}, "tiny"),
    ("detokenize", {"ids": [-1]}, "tiny"),  # fails on the aux thread
    ("detokenize", {"ids": ["a"]}, "tiny"),
    ("batch_tokenize", {"texts": [1]}, "tiny"),
    ("batch_tokenize", {"texts": "abc"}, "tiny"),
    ("check_draft", {"draft": 3}, "tiny"),
    ("batch_check_draft", {"drafts": [None]}, "tiny"),
    ("cancel", {"target": "x"}, None),
    ("cancel", {"target": 987654321}, None),
    ("cancel", {}, None),
    ("ping", {"x": 1}, None),
    ("ping", [], None),
    ("stats", {"deep": {"a": [1, {"b": None}]}}, None),
    ("shutdown", {"now": True}, None),  # bad params are rejected before anything is done
    ("list_models", {"x": 1}, None),
    ("load_model", {"trust_remote_code": "yes"}, "tiny"),
    ("load_model", {}, 12),
    ("load_model", {}, ""),
    ("load_model", {}, "/nonexistent/krmlx/model"),
    ("unload_model", {}, "ghost"),
    ("unload_model", {}, "null"),
    (123, {}, None),
    (None, {}, None),
    ("", {}, None),
    ("no_such_method", {}, None),
    ("x" * 20000, {}, None),
]
NO_PARAMS_IS_BAD = {"generate", "tokenize", "detokenize", "batch_tokenize", "check_draft",
                    "batch_check_draft", "cancel"}
DECODE_ERRORS = {"oversized", "garbage", "truncated", "not_a_map", "bad_envelope"}


class Fuzzer:
    """Seeded bad frames for one codec, each with the reply the protocol promises."""

    def __init__(self, codec: str, seed: int):
        self.codec = codec
        self.rng = random.Random(seed)
        self.next_id = FUZZ_ID0
        self.enc = make_codec(codec)

    def fid(self) -> int:
        self.next_id += 1
        return self.next_id

    def encode_obj(self, obj) -> bytes:
        if self.codec == "json":
            return orjson.dumps(obj) + b"\n"
        body = msgpack.packb(obj)
        return len(body).to_bytes(4, "big") + body

    def body(self, body: bytes) -> bytes:
        """A raw body framed so the stream stays in sync (see the module docstring)."""
        if self.codec == "json":
            body = body.replace(b"\n", b" ")
            return body + b"\n"
        return len(body).to_bytes(4, "big") + body

    def oracle(self, raw: bytes) -> tuple[str, int]:
        """The expected reply of undecodable input: decoded alone by the worker's codec."""
        codec = make_codec(self.codec, LIMIT)
        items = codec.feed(raw)
        assert not codec._buf and not getattr(codec, "_skip", 0), "fuzz frame not self-delimiting"
        assert len(items) == 1 and isinstance(items[0], ProtocolError), (raw[:80], items)
        return ("error", getattr(items[0], "frame_id", -1))

    def make(self) -> tuple[str, bytes, tuple]:
        """(category, raw bytes, expectation) with expectation one of ("error", id),
        ("result", id), ("ignored", id or None)."""
        r = self.rng.random()
        if r < 0.015 and self.codec == "json":  # in msgpack an oversized header is a desync
            return "oversized", *self.oversized()
        if r < 0.17:
            return "garbage", *self.garbage()
        if r < 0.32:
            return "truncated", *self.truncated()
        if r < 0.45:
            return "not_a_map", *self.not_a_map()
        if r < 0.60:
            return "bad_envelope", *self.bad_envelope()
        if r < 0.68:
            return "wrong_kind", *self.wrong_kind()
        if r < 0.92:
            return "bad_call", *self.bad_call()
        if r < 0.97:
            return "stray_ack", *self.stray_ack()
        if self.codec == "json" and r < 0.985:
            return "blank", self.rng.choice([b"\n", b"   \n", b"\t\r\n", b"\x0b \n"]), ("ignored", None)
        return "valid_noise", *self.valid_noise()

    def garbage(self):
        rng = self.rng
        kind = rng.randrange(5)
        if kind == 0:
            body = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 400)))
        elif kind == 1:  # deep nesting
            depth = rng.randint(600, 4000)
            body = (b"[" * depth + b"]" * depth) if self.codec == "json" else b"\x91" * depth + b"\xc0"
        elif kind == 2:  # invalid UTF-8 inside a string
            body = b'{"v":1,"id":"\xff\xfe","kind":"call"}' if self.codec == "json" else b"\xa2\xff\xfe"
        elif kind == 3:  # an empty msgpack body / a JSON fragment
            body = b"" if self.codec == "msgpack" else rng.choice([b"{", b"}", b'"', b"nul", b"1e999x"])
        else:  # reserved msgpack byte / JSON trailing garbage
            body = b"\xc1\xc1" if self.codec == "msgpack" else b'{"v":1} trailing'
        if self.codec == "json" and (not body.replace(b"\n", b" ").strip()):
            body = b"#"  # a blank line would be ignored, not answered
        raw = self.body(body)
        return raw, self.oracle(raw)

    def truncated(self):
        frame = call_frame(self.fid(), "tokenize", {"text": "some text " * self.rng.randint(1, 5)}, "tiny")
        full = self.enc.encode(frame)
        body = full[:-1] if self.codec == "json" else full[4:]
        cut = body[: self.rng.randint(1, len(body) - 1)]
        raw = self.body(cut)
        return raw, self.oracle(raw)

    def oversized(self):
        """A well-formed JSON ping, too big: skipped, never answered as a ping."""
        n = LIMIT + self.rng.randint(1, 4000)
        frame = orjson.dumps(call_frame(self.fid(), "ping", {"pad": "p" * n}))
        return frame + b"\n", ("error", -1)

    def not_a_map(self):
        obj = self.rng.choice([[1, 2], "call", 7, None, 3.5, True, [], {}, [{"v": 1}],
                               {"v": VERSION}, {"id": self.fid()}])
        raw = self.encode_obj(obj)
        return raw, self.oracle(raw)

    def bad_envelope(self):
        rng, fid = self.rng, self.fid()
        base = {"v": VERSION, "id": fid, "kind": "call", "method": "ping", "params": {}}
        case = rng.randrange(9)
        if case == 0:
            base["v"] = rng.choice([2, 0, "1", None, 1.5, [1]])
        elif case == 1:
            del base["v"]
        elif case == 2:
            # (an unhashable kind, a list or a map, is left to
            # test_unhashable_kind_gets_an_error_frame: today it kills the JSON worker)
            base["kind"] = rng.choice([None, "CALL", "request", 5, 2.5, False, ""])
        elif case == 3:
            del base["kind"]
        elif case == 4:  # unusable ids: the error goes to id -1
            base["id"] = rng.choice([str(fid), True, False, 1.5, None, [fid], {"id": fid}])
        elif case == 5:
            del base["id"]
        elif case == 6:  # huge int ids (uint64) are usable: the error goes to them
            base["id"], base["kind"] = 2**63 + fid, "bogus"
        elif case == 7:  # negative ids other than -1 are usable too
            base["id"], base["v"] = -fid, 0
        else:
            base["v"], base["kind"] = 99, "nonsense"
        raw = self.encode_obj(base)
        return raw, self.oracle(raw)

    def wrong_kind(self):
        fid = self.fid()
        kind = self.rng.choice(["result", "token", "done", "error", "ready"])
        frame = {"v": VERSION, "id": fid, "kind": kind, "value": 1, "tokens": [[1, "a"]]}
        return self.encode_obj(frame), ("error", fid)

    def bad_call(self):
        fid = self.fid()
        method, params, model = self.rng.choice(BAD_CALLS)
        frame = {"v": VERSION, "id": fid, "kind": "call", "method": method, "params": params}
        if model is not None:
            frame["model"] = model
        if self.rng.random() < 0.2 and method in NO_PARAMS_IS_BAD:
            frame.pop("params")  # a missing params map means {}: still bad for these
        return self.encode_obj(frame), ("error", fid)

    def stray_ack(self):
        fid = self.fid()
        frame = {"v": VERSION, "id": fid, "kind": "ack"}
        if self.rng.random() < 0.7:
            frame["n"] = self.rng.choice([1, 0, -5, "lots", None, 10**6, [1]])
        return self.encode_obj(frame), ("ignored", fid)

    def valid_noise(self):
        fid = self.fid()
        method = self.rng.choice(["ping", "stats", "list_models"])
        frame = call_frame(fid, method)
        frame["extra_top_level_key"] = "ignored"  # unknown envelope keys are allowed
        return self.encode_obj(frame), ("result", fid)


def clean_run(w: RawWorker) -> dict[int, tuple[list[int], dict]]:
    """The five generates, one at a time, before any bad frame: the reference."""
    out = {}
    for i, prompt in enumerate(PROMPTS):
        w.call(10 + i, "generate", {"prompt": prompt, **GEN_PARAMS}, "tiny")
        done = w.result(10 + i)
        assert done["kind"] == "done", done
        out[i] = (w.stream_tokens(10 + i), done)
    return out


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_live_worker_survives_fuzz_while_streaming(codec, tiny_path):
    fuzz = Fuzzer(codec, seed=1234 + len(codec))
    items = [fuzz.make() for _ in range(N_FUZZ)]
    stream_ids = {100 + i: i for i in range(len(PROMPTS))}
    gen_at = {k * (N_FUZZ // len(PROMPTS)): 100 + k for k in range(len(PROMPTS))}

    with RawWorker(codec, max_frame_bytes=LIMIT) as w:
        w.request(1, "load_model", {}, "tiny", timeout=120)
        want = clean_run(w)
        t0 = time.perf_counter()
        for pos, (_, raw, _) in enumerate(items):
            if pos in gen_at:  # a well-formed stream starts among the bad frames
                fid = gen_at[pos]
                w.call(fid, "generate", {"prompt": PROMPTS[stream_ids[fid]], **GEN_PARAMS}, "tiny")
            if pos == N_FUZZ // 2:
                w.call(3, "ping")  # answered mid-fuzz
            w.write(raw)
            if pos % 8 == 7:
                time.sleep(0.002)  # spread the fuzz over the streams' lifetime
        send_s = time.perf_counter() - t0
        for fid in stream_ids:
            done = w.result(fid, timeout=120)
            assert done["kind"] == "done", done
        ping = w.request(4, "ping", timeout=30)
        expected_ids = [exp[1] for _, _, exp in items if exp[0] in ("error", "result")]
        for fid in set(expected_ids) - {-1}:  # aux/compute-thread errors may come later
            w.wait_for(lambda f, fid=fid: f["id"] == fid, timeout=60)
        n_minus1 = sum(1 for _, _, exp in items if exp == ("error", -1))
        w.wait_for(lambda f: f["id"] == -1 and sum(
            g["id"] == -1 for g in w.frames) >= n_minus1, timeout=60)
        stats = w.request(5, "stats")
        time.sleep(0.3)  # anything else the worker would (wrongly) send
        frames = w.snapshot()
        assert w.proc.poll() is None, "the worker died"
        assert not w.bad_output, f"undecodable frames from the worker: {w.bad_output[:3]}"

    # 1. the well-formed streams are exactly the clean run's, with no error frame
    for fid, i in stream_ids.items():
        mine = [f for f in frames if f["id"] == fid]
        assert [f["kind"] for f in mine if f["kind"] != "token"] == ["done"], mine[-3:]
        got = [t for f in mine if f["kind"] == "token" for t, _ in f["tokens"]]
        assert got == want[i][0], f"stream {fid} differs from the clean run"
        assert {k: mine[-1][k] for k in ("finish_reason", "prompt_tokens")} == \
            {k: want[i][1][k] for k in ("finish_reason", "prompt_tokens")}
    # ... and they really ran while the fuzz was being read (interleaved replies)
    fuzz_reply_pos = [n for n, f in enumerate(frames) if f["id"] == -1 or f["id"] >= FUZZ_ID0]
    first_token_pos = min(n for n, f in enumerate(frames) if f["id"] in stream_ids)
    assert first_token_pos < fuzz_reply_pos[-1], "the streams did not overlap the fuzz"

    # 2. every bad frame got exactly the promised reply, nothing more
    by_id = collections.defaultdict(list)
    for f in frames:
        by_id[f["id"]].append(f)
    minus1 = by_id.pop(-1, [])
    assert len(minus1) == n_minus1 and all(f["kind"] == "error" for f in minus1)
    assert {f["code"] for f in minus1} <= {"protocol_error", "frame_too_large"}
    n_oversized = sum(cat == "oversized" for cat, _, _ in items)
    assert sum(f["code"] == "frame_too_large" for f in minus1) == n_oversized
    codes = collections.Counter(f["code"] for f in minus1)
    for cat, _, (kind, fid) in items:
        if fid is None or fid == -1:
            continue
        replies = by_id.pop(fid, [])
        if kind == "ignored":
            assert replies == [], (cat, replies)
        else:
            assert [f["kind"] for f in replies] == [kind], (cat, fid, replies)
            if kind == "error":
                assert replies[0]["code"] in ERROR_CODES_BY_ID, replies
                assert replies[0]["message"], replies
                codes[replies[0]["code"]] += 1
    leftovers = {k: v for k, v in by_id.items()
                 if k not in {0, 1, 3, 4, 5, *range(10, 10 + len(PROMPTS)), *stream_ids}}
    assert not leftovers, f"replies nobody asked for: {list(leftovers.items())[:3]}"

    # 3. the worker is healthy: answered ping mid-fuzz and after, no stream leaked
    assert by_id[3][0]["kind"] == "result" and ping["pid"] == w.pid
    assert stats["active_streams"] == 0 and stats["models"] == 1
    assert stats["bad_frames"] == sum(cat in DECODE_ERRORS for cat, _, _ in items)
    cats = collections.Counter(cat for cat, _, _ in items)
    print(f"\n[{codec}] {len(items)} bad frames {dict(cats)} sent in {send_s:.2f} s; "
          f"error codes {dict(codes)}; worker stats bad_frames={stats['bad_frames']} "
          f"errors={stats['errors']}")


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_one_decoder_resynchronises_after_every_bad_frame(codec):
    """The decoder's side of the same guarantee, without a worker: ONE codec fed a long
    stream of bad frames, each followed by a good one, in random chunk sizes, decodes
    every good frame exactly once and in order, with one error per answered bad frame."""
    fuzz = Fuzzer(codec, seed=99)
    enc = make_codec(codec)
    stream, want_good, want_errors = bytearray(), [], 0
    for i in range(3000):
        cat, raw, (kind, _) = fuzz.make()
        stream += raw
        want_errors += cat in DECODE_ERRORS
        good = call_frame(i, "tokenize", {"text": f"good {i}"}, "tiny")
        stream += enc.encode(good)
        want_good.append(good)
    codec_ = make_codec(codec, LIMIT)
    rng = random.Random(5)
    got_good, got_errors, pos = [], 0, 0
    while pos < len(stream):
        n = rng.choice([1, 7, 100, 4096, 65536, 200000])
        for item in codec_.feed(bytes(stream[pos:pos + n])):
            if isinstance(item, ProtocolError):
                got_errors += 1
            elif item["id"] < FUZZ_ID0 and item.get("method") == "tokenize" and \
                    str(item.get("params", {}).get("text", "")).startswith("good "):
                got_good.append(item)
        pos += n
    assert got_good == want_good
    assert got_errors == want_errors


@pytest.mark.parametrize("prefix", [2**31, LIMIT + 1], ids=["2GiB", "one-over"])
def test_msgpack_desync_makes_the_worker_report_and_exit(prefix):
    """A length prefix over the limit (2 GiB, or one byte over) would make the worker wait
    for, or skip, bytes that are the following frames: it says so in one error frame and
    exits (code 4) instead of serving a dead pipe."""
    with RawWorker("msgpack", max_frame_bytes=LIMIT) as w:
        w.call(1, "ping")
        w.result(1, timeout=30)
        w.write(prefix.to_bytes(4, "big") + b"\x00" * 64)
        code = w.proc.wait(timeout=30)
        frames = w.snapshot()
    assert code == 4
    errors = [f for f in frames if f["kind"] == "error"]
    assert [(f["id"], f["code"]) for f in errors] == [(-1, "protocol_desync")]
    assert str(LIMIT) in errors[0]["message"]


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_unhashable_kind_gets_an_error_frame(codec):
    with RawWorker(codec) as w:
        w.send({"v": VERSION, "id": 7, "kind": ["call"], "method": "ping"})
        w.send({"v": VERSION, "id": 8, "kind": {"call": 1}, "method": "ping"})
        w.call(9, "ping")
        try:
            w.result(9, timeout=30)
        except TimeoutError:
            pass
        frames = w.snapshot()
        alive = w.proc.poll() is None
    assert alive, "the worker died"
    assert [(f["id"], f["kind"]) for f in frames[1:]] == [(7, "error"), (8, "error"), (9, "result")]


def test_type_confused_params_are_bad_requests_not_internal_errors(tiny_path):
    calls = [
        Call("generate", {"prompt_ids": ["a"], "max_tokens": 2}, "tiny"),
        Call("generate", {"prompt_ids": [1.5], "max_tokens": 2}, "tiny"),
        Call("generate", {"prompt_ids": [2**63], "max_tokens": 2}, "tiny"),
        Call("generate", {"prompt": "x", "max_tokens": 2, "temperature": 0.5, "seed": -1}, "tiny"),
        Call("detokenize", {"ids": [10**12]}, "tiny"),
        Call("ping", {"faults": {"crash_after_tokens": "x"}}),
        Call("ping", {"faults": {"seed": [1]}}),
    ]

    async def go():
        out = []
        async with WorkerClient() as c:
            await unary(c, Call("load_model", {}, "tiny"))
            for call in calls:
                try:
                    out.append((call.params, [x async for x in c.call(call)]))
                except (BadRequest, WorkerError) as e:
                    out.append((call.params, e))
            assert (await c.ping())["pid"] == c.pid
        return out

    out = run(go())
    wrong = [(p, e) for p, e in out if not isinstance(e, BadRequest)]
    assert not wrong, wrong
