"""The 50-question set: general-knowledge questions with id and category."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .models import DATA_DIR

QUESTIONS_FILE = DATA_DIR / "questions_50.jsonl"


@dataclass(frozen=True)
class Question:
    id: str
    category: str
    question: str


def load_questions(path: Path | None = None) -> tuple[list[Question], str]:
    """The questions and the sha256 of the file's bytes (recorded in results)."""
    raw = Path(path or QUESTIONS_FILE).read_bytes()
    questions = [Question(**json.loads(line)) for line in raw.decode().splitlines() if line.strip()]
    return questions, hashlib.sha256(raw).hexdigest()
