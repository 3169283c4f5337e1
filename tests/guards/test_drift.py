import json
import random
from pathlib import Path

import pytest

from aiguardian.guards.base import Action, GuardContext
from aiguardian.guards.context import drift
from aiguardian.guards.context.drift import REASON, DriftGuard

SYSTEM = (
    "You are a friendly cooking assistant. Help users plan meals, find recipes, choose ingredients and spices, "
    "roast, bake, fry and grill, make sauces and desserts, and use kitchen tools such as the oven."
)
ON_TOPIC = [
    "How long should I roast a whole chicken in the oven?",
    "What spices go well with roasted vegetables?",
    "Can I replace butter with olive oil when baking bread?",
    "How do I make the sauce thicker without flour?",
    "What is a good dessert recipe with apples?",
]
OFF_TOPIC = [
    "By the way, how do I file my tax return?",
    "Can I deduct my home office expenses from my income tax?",
    "What are the capital gains tax rules for selling shares?",
]


def conversation_scores(guard: DriftGuard, turns: list[str]) -> list[tuple[float, Action]]:
    messages: list[dict[str, object]] = [{"role": "system", "content": SYSTEM}]
    out = []
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        verdict = guard.check(GuardContext(turn, messages=list(messages)))
        out.append((verdict.score, verdict.action))
        messages.append({"role": "assistant", "content": "Here you go."})
    return out


def test_a_cooking_chat_that_turns_to_tax_law_drifts_past_the_threshold() -> None:
    guard = DriftGuard()
    scores = conversation_scores(guard, ON_TOPIC + OFF_TOPIC)
    on, off = scores[: len(ON_TOPIC)], scores[len(ON_TOPIC) :]
    assert all(score < guard.threshold and action is Action.ALLOW for score, action in on)
    assert all(score >= guard.threshold and action is Action.WARN for score, action in off)
    assert min(s for s, _ in off) > max(s for s, _ in on)


def test_the_verdict_names_drift() -> None:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": OFF_TOPIC[1]}]
    verdict = DriftGuard(action="block").check(GuardContext(OFF_TOPIC[1], messages=messages))
    assert verdict.action is Action.BLOCK
    assert verdict.reason_codes == [REASON]
    assert verdict.findings[0].type == "drift"


def test_allowed_topics_widen_the_purpose() -> None:
    turn = OFF_TOPIC[1]
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": turn}]
    plain = DriftGuard().check(GuardContext(turn, messages=messages))
    widened = DriftGuard(allowed_topics=["income tax, deductions and tax returns"]).check(
        GuardContext(turn, messages=messages)
    )
    assert plain.action is Action.WARN
    assert widened.action is Action.ALLOW
    assert widened.score < plain.score


def test_the_first_user_turns_join_the_purpose() -> None:
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "I need help with my income tax return and deductions."},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": "Which tax deductions apply to a home office?"},
    ]
    verdict = DriftGuard().check(GuardContext("", messages=messages))
    assert verdict.action is Action.ALLOW
    assert 0.0 < verdict.score < DriftGuard().threshold


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Thanks!"}],
        [{"role": "user", "content": "What are the capital gains tax rules for selling shares?"}],
        [],
    ],
)
def test_turns_without_content_or_without_a_purpose_are_not_judged(messages: list[dict[str, str]]) -> None:
    verdict = DriftGuard().check(GuardContext("", messages=messages))
    assert verdict.action is Action.ALLOW
    assert verdict.score == 0.0


def _corpus(path: Path) -> None:
    topics = {
        "cooking": "roast chicken oven recipe bake bread butter flour sauce spice dessert apple kitchen meal",
        "tax": "income tax return deduction expense capital gains shares audit refund filing rate bracket",
        "football": "match goal team league player coach stadium season score cup referee striker",
    }
    rng = random.Random(3)
    records = []
    for i in range(90):
        words = topics[list(topics)[i % 3]].split()
        records.append({"text": " ".join(rng.choice(words) for _ in range(170)), "label": 0})
    (path / "toxicity").mkdir(parents=True)
    (path / "toxicity" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_training_twice_with_one_seed_writes_the_same_bytes_and_learns_topics(tmp_path: Path) -> None:
    _corpus(tmp_path / "data")
    drift.train(tmp_path / "data", tmp_path / "a", seed=5)
    drift.train(tmp_path / "data", tmp_path / "b", seed=5)
    for name in (drift.VOCAB_FILE, drift.VECTORS_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    model = drift.load_model(tmp_path / "a")
    purpose = ["a recipe to roast chicken in the oven"]
    assert model.drift("bake bread with butter", purpose) < model.drift("tax deduction refund", purpose)
