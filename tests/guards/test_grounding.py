import json
import subprocess
import sys
from pathlib import Path

import pytest

from aiguardian.guards.base import Action, Direction, GuardContext
from aiguardian.guards.trust import grounding
from aiguardian.guards.trust.grounding import REASON, GroundingGuard

SOURCE = (
    "Acme Corp reported revenue of 12.4 million dollars for the third quarter, up 8 percent from a year earlier. "
    "Chief executive Maria Lopez said demand for the company's water filters grew in Europe. The company will "
    "open a new factory in Lyon next spring. It did not change its forecast for the full year."
)
SUPPORTED = [
    "Acme Corp reported third-quarter revenue of 12.4 million dollars, up 8 percent, as demand for its water "
    "filters grew in Europe. It will open a factory in Lyon next spring.",
    "Acme Corp reported revenue of 12.4 million dollars for the third quarter. The company did not change its "
    "forecast for the full year.",
]
UNSUPPORTED = [
    "Acme Corp reported revenue of 19.7 million dollars for the third quarter, down 15 percent, and chief "
    "executive John Smith resigned.",
    "Acme Corp reported a loss for the third quarter. Chief executive Maria Lopez said the company will close "
    "its factory in Berlin and cut its forecast.",
]
EVAL = Path(__file__).parents[3] / "shared" / "eval"


def check(answer: str, sources: list[str], **options: object):
    return GroundingGuard(**options).check(GuardContext(answer, Direction.OUTPUT, sources=sources))  # type: ignore[arg-type]


@pytest.mark.parametrize("answer", SUPPORTED)
def test_answers_the_sources_support_pass(answer: str) -> None:
    verdict = check(answer, [SOURCE])
    assert verdict.action is Action.ALLOW
    assert verdict.reason_codes == []
    assert 0.0 < verdict.score < GroundingGuard().threshold


@pytest.mark.parametrize("answer", UNSUPPORTED)
def test_made_up_numbers_names_and_events_are_ungrounded(answer: str) -> None:
    verdict = check(answer, [SOURCE])
    assert verdict.action is Action.WARN
    assert verdict.reason_codes == [REASON]
    assert verdict.findings
    for finding in verdict.findings:
        assert finding.start is not None
        assert finding.end is not None
        sentence = answer[finding.start : finding.end]
        assert sentence == sentence.strip()
        assert sentence in answer


def test_the_least_supported_sentence_is_the_finding() -> None:
    answer = (
        "Acme Corp reported revenue of 12.4 million dollars. Its chief executive John Smith resigned in 2019."
    )
    verdict = check(answer, [SOURCE], threshold=0.0, max_findings=1)
    (finding,) = verdict.findings
    assert answer[finding.start : finding.end] == "Its chief executive John Smith resigned in 2019."


def test_without_sources_the_answer_is_allowed_with_score_zero() -> None:
    for sources in ([], ["", "  "]):
        verdict = check(UNSUPPORTED[0], sources)
        assert verdict.action is Action.ALLOW
        assert verdict.score == 0.0


def test_the_policy_chooses_threshold_and_action() -> None:
    assert check(SUPPORTED[0], [SOURCE], threshold=0.0, action="block").action is Action.BLOCK
    assert check(UNSUPPORTED[0], [SOURCE], threshold=1.0).action is Action.ALLOW


def test_several_sources_count_together() -> None:
    first, second = SOURCE.split(" Chief executive")
    answer = "Acme Corp reported revenue of 12.4 million dollars. Maria Lopez said demand grew in Europe."
    alone = check(answer, [first]).score
    together = check(answer, [first, "Chief executive" + second]).score
    assert together < alone


def test_score_command_writes_one_line_per_record() -> None:
    records = [
        {"id": 0, "context": SOURCE, "response": SUPPORTED[0]},
        {"id": 1, "context": SOURCE, "response": UNSUPPORTED[0]},
        {"id": 2, "context": "", "response": ""},
    ]
    done = subprocess.run(
        [sys.executable, "-m", "aiguardian", "guards", "score", "grounding"],
        input="".join(json.dumps(r) + "\n" for r in records),
        capture_output=True,
        text=True,
        check=True,
    )
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(out) == 3
    assert all(0.0 <= o["score"] <= 1.0 and o["label"] in (0, 1) for o in out)
    # The score is P(supported), as shared/eval/evaluate.py expects: label 1 means supported.
    assert out[0]["score"] > out[1]["score"]
    assert out[1]["label"] == 0


@pytest.mark.skipif(
    not (EVAL / "grounding" / "train.jsonl").exists(), reason="needs shared/eval beside the project"
)
def test_training_twice_with_one_seed_writes_the_same_bytes(tmp_path: Path) -> None:
    data = tmp_path / "data" / "grounding"
    data.mkdir(parents=True)
    lines = (EVAL / "grounding" / "train.jsonl").read_text(encoding="utf-8").splitlines()[:160]
    (data / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    first = grounding.train(tmp_path / "data", tmp_path / "a", seed=7, iterations=20)
    grounding.train(tmp_path / "data", tmp_path / "b", seed=7, iterations=20)
    a = (tmp_path / "a" / grounding.MODEL_FILE).read_bytes()
    assert a == (tmp_path / "b" / grounding.MODEL_FILE).read_bytes()
    assert first["records"] == 160
    model = grounding.load_model(tmp_path / "a" / grounding.MODEL_FILE)
    assert 0.0 <= float(model.score_pairs([(SOURCE, SUPPORTED[0])])[0]) <= 1.0
