"""Train the byte-level BPE tokenizer that krmlx's synthetic models ship with.

Run from the project root: ``python data/make_tokenizer.py``. It writes
``data/tokenizer/tokenizer.json`` and ``data/tokenizer/tokenizer_config.json``.
The corpus is the 50 questions plus the docstrings of a fixed list of Python
standard-library modules, so the script needs nothing but ``tokenizers``.
The shipped files are what krmlx uses; re-running may differ slightly across
Python versions (the docstrings change), which is why the output is committed.
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

VOCAB_SIZE = 4096
SPECIAL_TOKENS = ["<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CORPUS_MODULES = [
    "abc", "argparse", "asyncio", "base64", "bisect", "calendar", "collections", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "email", "enum", "fractions",
    "functools", "gzip", "heapq", "html", "http.client", "inspect", "io", "itertools",
    "json", "logging", "math", "os", "pathlib", "pickle", "random", "re", "shutil",
    "socket", "sqlite3", "statistics", "string", "subprocess", "tarfile", "textwrap",
    "threading", "time", "typing", "unittest", "urllib.parse", "uuid", "zipfile",
]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def iter_corpus(root: Path):
    for line in (root / "questions_50.jsonl").read_text().splitlines():
        yield json.loads(line)["question"]
    for name in CORPUS_MODULES:
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module):
            doc = inspect.getdoc(obj) if callable(obj) else None
            if doc:
                yield doc
        if module.__doc__:
            yield module.__doc__


def main() -> None:
    root = Path(__file__).resolve().parent
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(iter_corpus(root), trainer=trainer)
    out = root / "tokenizer"
    out.mkdir(exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "<|end|>",
        "unk_token": None,
        "pad_token": "</s>",
        "add_bos_token": False,
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"vocab {tok.get_vocab_size()} -> {out}")


if __name__ == "__main__":
    main()
