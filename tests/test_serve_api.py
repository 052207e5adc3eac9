"""krmlx serve's pure parts: OpenAI bodies -> krmlx Requests (every error naming its field),
stop-sequence matching, response bodies; and the core's messages / top_p on Request and in
the worker's param check."""

import pytest

from krmlx import Request
from krmlx.errors import BadRequest, ConfigError
from krmlx.serve import ServeSettings
from krmlx.serve.generation import StopMatcher
from krmlx.serve.openai_api import (
    ApiError,
    chunk_body,
    param_of,
    parse_request,
    usage_body,
    usage_chunk_body,
)
from krmlx.worker.server import check_params

S = ServeSettings("tiny", aliases=("tiny-alias",))
MSG = [{"role": "user", "content": "Hi"}]


def chat(**body):
    return parse_request("chat", {"messages": MSG, **body}, S)


def error_of(kind, body) -> ApiError:
    with pytest.raises(ApiError) as e:
        parse_request(kind, body, S)
    return e.value


def test_a_chat_body_becomes_a_request_with_its_messages():
    p = chat(model="tiny", max_tokens=7, temperature=0.5, top_p=0.9, seed=3, stop="\n",
             user="u1", stream=True, stream_options={"include_usage": True})
    r = p.request
    assert (r.messages, r.max_tokens, r.temperature, r.top_p, r.seed) == \
        (({"role": "user", "content": "Hi"},), 7, 0.5, 0.9, 3)
    assert (p.kind, p.model, p.stream, p.include_usage, p.stop) == ("chat", "tiny", True, True, ("\n",))
    assert p.response_id.startswith("chatcmpl-")


def test_defaults_null_fields_aliases_and_the_newer_max_tokens_name():
    p = chat(model=None, temperature=None, stop=None, n=None, stream=None)
    assert (p.model, p.request.max_tokens, p.request.temperature, p.stream) == ("tiny", 512, 0.0, False)
    assert chat(model="tiny-alias").model == "tiny-alias"
    assert chat(max_tokens=9, max_completion_tokens=4).request.max_tokens == 4
    assert chat(n=1, logprobs=False, presence_penalty=0.0, tools=[]).request.max_tokens == 512


def test_message_forms_developer_role_and_text_parts():
    p = chat(messages=[{"role": "developer", "content": "Be brief."},
                       {"role": "user", "content": [{"type": "text", "text": "a"},
                                                    {"type": "text", "text": "b"}], "name": "x"}])
    assert p.request.messages == ({"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "ab"})


@pytest.mark.parametrize("prompt, fields", [
    ("Once", {"prompt": "Once", "prompt_ids": None}),
    (["Once"], {"prompt": "Once", "prompt_ids": None}),
    ([5, 6, 7], {"prompt_ids": (5, 6, 7)}),
])
def test_completion_prompt_forms(prompt, fields):
    r = parse_request("text", {"prompt": prompt}, S).request
    assert not r.chat
    for k, v in fields.items():
        assert getattr(r, k) == v


@pytest.mark.parametrize("kind, body, status, param, code", [
    ("chat", [1, 2], 400, None, "invalid_body"),
    ("chat", {"messages": MSG, "model": "gpt-4"}, 404, "model", "model_not_found"),
    ("chat", {"messages": MSG, "model": 3}, 400, "model", "invalid_value"),
    ("chat", {"messages": MSG, "n": 2}, 400, "n", "unsupported_parameter"),
    ("chat", {"messages": MSG, "logprobs": True}, 400, "logprobs", "unsupported_parameter"),
    ("chat", {"messages": MSG, "top_k": 40}, 400, "top_k", "unsupported_parameter"),
    ("chat", {"messages": MSG, "tools": [{"type": "function"}]}, 400, "tools", "unsupported_parameter"),
    ("chat", {"messages": MSG, "ignore_eos": True}, 400, "ignore_eos", "unsupported_parameter"),
    ("chat", {"messages": MSG, "frobnicate": 1}, 400, "frobnicate", "unrecognized_argument"),
    ("chat", {"messages": MSG, "temperature": "hot"}, 400, "temperature", "invalid_value"),
    ("chat", {"messages": MSG, "temperature": 2.5}, 400, "temperature", "invalid_value"),
    ("chat", {"messages": MSG, "top_p": 0}, 400, "top_p", "invalid_value"),
    ("chat", {"messages": MSG, "seed": -1}, 400, "seed", "invalid_value"),
    ("chat", {"messages": MSG, "seed": True}, 400, "seed", "invalid_value"),
    ("chat", {"messages": MSG, "max_tokens": 0}, 400, "max_tokens", "invalid_value"),
    ("chat", {"messages": MSG, "max_completion_tokens": 1.5}, 400, "max_completion_tokens",
     "invalid_value"),
    ("chat", {"messages": MSG, "stop": [1]}, 400, "stop", "invalid_value"),
    ("chat", {"messages": MSG, "stop": [""]}, 400, "stop", "invalid_value"),
    ("chat", {"messages": MSG, "stream": "yes"}, 400, "stream", "invalid_value"),
    ("chat", {"messages": MSG, "stream_options": {"include_usage": True}}, 400,
     "stream_options", "invalid_value"),
    ("chat", {"messages": MSG, "stream": True, "stream_options": {"continuous_usage_stats": True}},
     400, "stream_options.continuous_usage_stats", "unsupported_parameter"),
    ("chat", {}, 400, "messages", "invalid_value"),
    ("chat", {"messages": []}, 400, "messages", "invalid_value"),
    ("chat", {"messages": ["hi"]}, 400, "messages[0]", "invalid_value"),
    ("chat", {"messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role",
     "invalid_value"),
    ("chat", {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content",
     "invalid_value"),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     "messages[0].content[0]", "unsupported_parameter"),
    ("chat", {"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, 400,
     "messages[0].tool_calls", "unsupported_parameter"),
    ("chat", {"messages": MSG, "prompt": "x"}, 400, "prompt", "unrecognized_argument"),
    ("text", {"prompt": ["a", "b"]}, 400, "prompt", "invalid_value"),
    ("text", {"prompt": "   "}, 400, "prompt", "invalid_value"),
    ("text", {"prompt": "a", "echo": True}, 400, "echo", "unsupported_parameter"),
    ("text", {"prompt": "a", "best_of": 3}, 400, "best_of", "unsupported_parameter"),
    ("text", {"messages": MSG}, 400, "messages", "unrecognized_argument"),
])
def test_bad_bodies_are_4xx_naming_the_field(kind, body, status, param, code):
    e = error_of(kind, body)
    assert (e.status, e.param, e.code) == (status, param, code), e.message
    assert set(e.body()["error"]) == {"message", "type", "param", "code"}
    if param:
        assert param.split(".")[0].split("[")[0] in e.message


def test_param_of_reads_the_field_from_krmlx_messages():
    assert param_of(BadRequest("max_tokens: must be a positive int")) == "max_tokens"
    assert param_of(BadRequest("generate: param 'top_p' must be in (0, 1]")) == "top_p"
    assert param_of(BadRequest("messages[2].role: must be one of ...")) == "messages[2].role"
    assert param_of(BadRequest("something else went wrong")) is None


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="max_in_flight"):
        ServeSettings("tiny", max_in_flight=0)
    with pytest.raises(ConfigError, match="model_id"):
        ServeSettings("")
    assert ServeSettings("m", aliases=("m", "n")).model_names == ("m", "n")


# -- stop sequences -----------------------------------------------------------------------

def feed_all(stops, pieces):
    m, out = StopMatcher(stops), []
    for piece in pieces:
        text, stopped = m.feed(piece)
        out.append(text)
        if stopped:
            return "".join(out), True
    return "".join(out) + m.flush(), False


@pytest.mark.parametrize("stops, pieces, want", [
    ((), ["ab", "cd"], ("abcd", False)),
    (("END",), ["hello E", "N", "D world"], ("hello ", True)),
    (("END",), ["hello E", "N", "x"], ("hello ENx", False)),
    (("xy", "b"), ["aaxb", "y"], ("aax", True)),  # the earliest stop wins
    (("\n\n",), ["line\n", "\nmore"], ("line", True)),
    (("abc",), ["ab"], ("ab", False)),  # held back, then flushed at the end
])
def test_stop_matcher(stops, pieces, want):
    assert feed_all(stops, pieces) == want


def test_stop_matcher_holds_back_only_a_possible_start():
    m = StopMatcher(("END",))
    assert m.feed("the E") == ("the ", False)
    assert m.feed("x") == ("Ex", False)
    assert m.feed("no stop here") == ("no stop here", False)


# -- bodies ----------------------------------------------------------------------------------

def test_chunk_and_usage_bodies():
    p = chat(stream=True, stream_options={"include_usage": True})
    first = chunk_body(p, "", role=True)
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first["object"] == "chat.completion.chunk" and first["usage"] is None
    last = chunk_body(p, None, "cancelled")
    assert last["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}
    u = usage_body(5, 3, 2)
    assert u == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8,
                 "prompt_tokens_details": {"cached_tokens": 2}}
    end = usage_chunk_body(p, u, {"ttft_ms": 1.0})
    assert end["choices"] == [] and end["usage"] == u and end["timings"] == {"ttft_ms": 1.0}
    t = parse_request("text", {"prompt": "a", "stream": True}, S)
    assert chunk_body(t, "x")["choices"][0]["text"] == "x" and "usage" not in chunk_body(t, "x")


# -- the core: Request.messages / top_p, and the worker's param check ------------------------

def test_request_messages_and_top_p():
    r = Request(messages=[{"role": "user", "content": "Hi"}], top_p=0.5)
    assert r.to_params()["messages"] == [{"role": "user", "content": "Hi"}]
    assert r.to_params()["top_p"] == 0.5
    assert "top_p" not in Request("x").to_params() and "messages" not in Request("x").to_params()
    for bad, field in [([], "messages"), ([{"role": "bot", "content": "x"}], "messages[0].role"),
                       ([{"role": "user", "content": None}], "messages[0].content"),
                       ([{"role": "user", "content": "  "}], "messages")]:
        with pytest.raises(BadRequest, match=field.replace("[", r"\[").replace("]", r"\]")):
            Request(messages=bad)
    for p in (0, 1.5, True, "x"):
        with pytest.raises(BadRequest, match="top_p"):
            Request("x", top_p=p)


def test_worker_param_check_takes_messages_and_top_p():
    ok = check_params("generate", {"messages": [{"role": "user", "content": "Hi"}],
                                   "max_tokens": 3, "top_p": 0.9})
    assert ok["top_p"] == 0.9
    with pytest.raises(BadRequest, match="messages"):
        check_params("generate", {"messages": [{"role": "x", "content": "Hi"}], "max_tokens": 3})
    with pytest.raises(BadRequest, match="top_p"):
        check_params("generate", {"prompt": "a", "max_tokens": 3, "top_p": 0.0})


def test_param_of_reads_the_workers_messages_check():
    with pytest.raises(BadRequest) as e:
        check_params("generate", {"messages": [{"role": "x", "content": "Hi"}], "max_tokens": 3})
    assert param_of(e.value) == "messages[0].role"
