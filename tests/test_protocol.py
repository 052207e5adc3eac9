import random

import msgpack
import orjson
import pytest

from krmlx.errors import FrameTooLarge, ProtocolDesync, ProtocolError
from krmlx.worker.handlers import HANDLERS
from krmlx.worker.protocol import (
    METHODS,
    JsonCodec,
    MsgpackCodec,
    call_frame,
    make_codec,
)

CODECS = [JsonCodec, MsgpackCodec]


def test_every_method_has_one_handler_or_is_the_read_loops_own():
    assert set(HANDLERS) | {"generate", "shutdown"} == set(METHODS)
    assert not set(HANDLERS) & {"generate", "shutdown"}


@pytest.mark.parametrize("codec_cls", CODECS)
def test_round_trip_byte_by_byte(codec_cls):
    codec = codec_cls()
    frames = [call_frame(i, "tokenize", {"text": "héllo\nworld " * i}, "tiny") for i in range(1, 6)]
    data = b"".join(codec.encode(f) for f in frames)
    out = []
    for i in range(len(data)):
        out += codec.feed(data[i:i + 1])
    assert out == frames


def test_oversized_json_line_is_skipped_and_stream_stays_in_sync():
    codec = JsonCodec(max_frame_bytes=200)
    big = codec.encode(call_frame(2, "tokenize", {"text": "x" * 5000}))
    ok = codec.encode(call_frame(3, "ping"))
    out = []
    for i in range(0, len(big), 64):  # the oversized frame arrives in pieces
        out += codec.feed(big[i:i + 64])
    out += codec.feed(ok)
    assert isinstance(out[0], FrameTooLarge) and "200" in str(out[0])
    assert out[1:] == [call_frame(3, "ping")]
    assert len(codec._buf) < 300  # memory stays bounded by the limit


@pytest.mark.parametrize("prefix", [2**31, 201], ids=["2GiB", "one-over"])
def test_msgpack_length_over_the_limit_is_a_desync_not_a_skip(prefix):
    """A length prefix no sender writes (both sides check before sending) can't be told
    from a corrupt one; skipping it could swallow every later frame, so the decoder says
    the stream is out of step and decodes nothing more."""
    codec = MsgpackCodec(max_frame_bytes=200)
    ok = codec.encode(call_frame(3, "ping"))
    out = codec.feed(ok + prefix.to_bytes(4, "big") + b"x" * 50 + ok)
    assert out[0] == call_frame(3, "ping")
    assert isinstance(out[1], ProtocolDesync) and "200" in str(out[1]) and len(out) == 2
    assert codec.desync is out[1] and codec.feed(ok) == []
    assert len(codec._buf) == 0


def test_truncated_msgpack_frame_ends_in_a_desync():
    """A frame cut short makes the next frames its body, and then a garbage length: the
    decoder reports a malformed frame, then the desync, instead of serving a dead pipe."""
    codec = MsgpackCodec(max_frame_bytes=4096)
    good = codec.encode(call_frame(1, "tokenize", {"text": "abc" * 20}, "tiny"))
    cut = (len(good) + 40).to_bytes(4, "big") + good[4:]  # says 40 bytes more than it has
    out = codec.feed(cut + b"\xff" * 40 + good + b"\xff\xff\xff\xff")
    assert isinstance(out[0], ProtocolError) and isinstance(out[-1], ProtocolDesync)


def test_bad_envelopes_name_the_problem():
    codec = JsonCodec()
    lines = [b'[1,2]', b'{"v":2,"id":1,"kind":"call"}', b'{"v":1,"id":"x","kind":"call"}',
             b'{"v":1,"id":4,"kind":"bogus"}', b'{"v":1,"id":5,']
    out = codec.feed(b"\n".join(lines) + b"\n")
    assert all(isinstance(e, ProtocolError) for e in out)
    assert "map" in str(out[0]) and "version" in str(out[1]) and "id" in str(out[2])
    assert "kind" in str(out[3]) and out[3].frame_id == 4 and "malformed" in str(out[4])



@pytest.mark.parametrize("codec_cls", [JsonCodec, MsgpackCodec])
def test_unhashable_kind_is_a_protocol_error_with_the_frame_id(codec_cls):
    codec = codec_cls()
    frames = [{"v": 1, "id": 7, "kind": ["call"]}, {"v": 1, "id": 8, "kind": {"call": 1}},
              call_frame(9, "ping")]
    out = codec.feed(b"".join(codec.encode(f) for f in frames))
    assert [type(x) for x in out] == [ProtocolError, ProtocolError, dict]
    assert [out[0].frame_id, out[1].frame_id, out[2]["id"]] == [7, 8, 9]
    assert "kind" in str(out[0])

def _fuzz_bytes(rng: random.Random, codec) -> bytes:
    good = codec.encode(call_frame(rng.randint(0, 99), "tokenize", {"text": "abc"}, "tiny"))
    choice = rng.randrange(5)
    if choice == 0:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300)))
    if choice == 1:
        return good[: rng.randint(0, len(good) - 1)]  # truncated
    if choice == 2:  # type-confused
        obj = rng.choice([[1], "s", 3, None, {"v": 1, "id": [1], "kind": "call"}, {"v": 1}])
        return orjson.dumps(obj) + b"\n" if codec.name == "json" else \
            len(msgpack.packb(obj)).to_bytes(4, "big") + msgpack.packb(obj)
    if choice == 3:  # oversized header / line
        return (b"\xff\xff\xff\xf0" if codec.name == "msgpack" else b"x" * 5000 + b"\n")
    return good


@pytest.mark.parametrize("name", ["json", "msgpack"])
def test_fuzz_decoder_never_raises(name):
    rng = random.Random(7)
    for _ in range(1500):
        codec = make_codec(name, max_frame_bytes=4096)
        data = _fuzz_bytes(rng, codec)
        for item in codec.feed(data):
            assert isinstance(item, (dict, ProtocolError))
        # after garbage, the codec may be mid-frame; a fresh codec always decodes a good frame
    codec = make_codec(name)
    assert codec.feed(codec.encode(call_frame(1, "ping"))) == [call_frame(1, "ping")]


def test_unknown_codec():
    with pytest.raises(ValueError, match="codec"):
        make_codec("xml")
