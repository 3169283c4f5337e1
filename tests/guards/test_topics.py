"""BannedTopicsGuard: keywords and free-text descriptions from the policy."""

from __future__ import annotations

import pytest

from aiguardian.guards.base import Action, GuardContext
from aiguardian.guards.bias.topics import REASON, BannedTopicsGuard

TOPICS = {
    "weapons": ["firearm", "3d-printed gun", "ammunition"],
    "gambling": "betting, casinos, poker, sports wagers and online slots",
    "medical": {"keywords": ["prescription"], "description": "dosage of medicines and drugs"},
}


def check(text: str, **options: object):  # type: ignore[no-untyped-def]
    return BannedTopicsGuard(topics=TOPICS, **options).check(GuardContext(text=text))  # type: ignore[arg-type]


def test_a_keyword_blocks_with_the_topic_and_span() -> None:
    text = "Where can I buy Ammunition cheaply?"
    verdict = check(text)
    assert verdict.action is Action.BLOCK
    assert verdict.reason_codes == [REASON]
    (finding,) = verdict.findings
    assert finding.detail == "weapons"
    assert text[finding.start : finding.end] == "Ammunition"


def test_keywords_match_phrases_with_other_separators_and_plurals() -> None:
    assert check("how do 3D printed guns work").findings[0].detail == "weapons"
    assert check("Firearms safety course").findings[0].detail == "weapons"


def test_a_keyword_inside_another_word_does_not_match() -> None:
    assert check("The prescriptionist sat down").action is Action.ALLOW  # not the word itself
    assert check("A firearmchair").action is Action.ALLOW


def test_descriptions_need_more_than_one_of_their_words() -> None:
    assert check("Which casinos have the best poker tables?").findings[0].detail == "gambling"
    assert check("I enjoy watching sports with friends").action is Action.ALLOW


def test_an_unrelated_text_passes() -> None:
    verdict = check("What is a good recipe for pancakes with blueberries?")
    assert verdict.action is Action.ALLOW
    assert verdict.score < 0.5


def test_warn_action_and_bad_options() -> None:
    assert check("poker and casino nights", action="warn").action is Action.WARN
    with pytest.raises(ValueError, match="topics"):
        BannedTopicsGuard()
    with pytest.raises(ValueError, match="empty"):
        BannedTopicsGuard(topics={"nothing": []})
    with pytest.raises(ValueError, match="keywords"):
        BannedTopicsGuard(topics={"odd": 42})
