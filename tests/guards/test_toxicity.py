"""ToxicityGuard on the shipped model: insults and slurs are flagged, ordinary and merely blunt text passes."""

from __future__ import annotations

import pytest

from aiguardian.guards.base import Action, GuardContext
from aiguardian.guards.bias.toxicity import SIGNAL_NAMES, ToxicityGuard, signals

TOXIC = [
    "You are a worthless idiot and everyone hates you.",
    "Shut up, you stupid bitch.",
    "What a pathetic moron, go kill yourself.",
    "f*ck you and your whole disgusting family",
]
CLEAN = [
    "Thank you so much for your help with the report yesterday!",
    "The meeting is moved to Thursday at 3pm.",
    "I disagree with your proposal, but I see why you made it.",
    "hi",
]


@pytest.fixture(scope="module")
def guard() -> ToxicityGuard:
    return ToxicityGuard()


@pytest.mark.parametrize("text", TOXIC)
def test_insults_are_blocked(guard: ToxicityGuard, text: str) -> None:
    verdict = guard.check(GuardContext(text=text))
    assert verdict.action is Action.BLOCK, verdict.score
    assert verdict.reason_codes == ["BIAS_TOXICITY"]


@pytest.mark.parametrize("text", CLEAN)
def test_ordinary_text_passes(guard: ToxicityGuard, text: str) -> None:
    verdict = guard.check(GuardContext(text=text))
    assert verdict.action is Action.ALLOW, verdict.score


def test_one_toxic_sentence_in_a_long_text_is_found_with_its_span(guard: ToxicityGuard) -> None:
    polite = "The quarterly numbers look fine and the team delivered the project on time. " * 6
    insult = "You are a worthless idiot and everyone hates you."
    text = f"{polite}\n{insult}\n{polite}"
    verdict = guard.check(GuardContext(text=text))
    assert verdict.action is Action.BLOCK
    finding = verdict.findings[0]
    assert finding.start is not None
    assert finding.end is not None
    assert text[finding.start : finding.end] == insult


def test_signals_count_profanity_and_insults_aimed_at_the_reader() -> None:
    values = dict(zip(SIGNAL_NAMES, signals("you are such an idiot, damn"), strict=True))
    assert values["insult"] > 0
    assert values["profanity"] > 0
    assert values["insult_at_reader"] > 0
    assert not any(signals("Have a lovely evening."))


def test_warn_and_empty_text() -> None:
    assert ToxicityGuard(action="warn").check(GuardContext(text=TOXIC[0])).action is Action.WARN
    assert ToxicityGuard().check(GuardContext(text="   ")).score == 0.0
