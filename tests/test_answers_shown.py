"""A bench run prints a few of the answers it served (format_sample)."""

from krmlx.bench.report_text import REAL_MODEL_HINT, format_sample
from krmlx.questions import load_questions


def doc(model, engine="direct"):
    qs = load_questions()[0]
    records = [{"target": engine, "trial": 0, "request_id": q.id, "ok": True,
                "output_text": f"answer {i}\n  spread", "output_tokens": 3, "finish_reason": "stop"}
               for i, q in enumerate(qs[:5])]
    records.append({"target": "other", "trial": 0, "request_id": qs[0].id, "ok": True,
                    "output_text": "not shown", "output_tokens": 2, "finish_reason": "stop"})
    return {"config": {"model": model}, "records": records}


def test_a_sample_of_question_answer_pairs_is_printed():
    q = load_questions()[0]
    text = format_sample(doc("smollm2-135m"), n=3)
    assert text.splitlines()[0] == "sample answers (direct, model smollm2-135m):"
    assert f"  Q: {q[0].question}" in text and "  A: answer 0 spread  [3 tokens, stop]" in text
    assert "answer 2" in text and "answer 3" not in text and "not shown" not in text
    assert REAL_MODEL_HINT not in text


def test_a_synthetic_model_points_to_the_real_one():
    text = format_sample(doc("mini"))
    assert "random weights" in text and REAL_MODEL_HINT in text


def test_no_answers_no_sample():
    assert format_sample({"config": {"model": "mini"}, "records": []}) == ""
