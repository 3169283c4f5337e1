import pytest

from aiguardian.guards.base import Action, Direction, GuardContext
from aiguardian.guards.trust.refusal import REASON, RefusalGuard


def check(text: str, **options: object):
    return RefusalGuard(**options).check(GuardContext(text, Direction.OUTPUT))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "answer",
    [
        "I'm sorry, but I can't help with that.",
        "I cannot assist with creating malware.",
        "As an AI language model, I cannot provide medical advice.",
        "I must decline this request.",
        "I won\u2019t be able to help with that request.",
        "Unfortunately, I am unable to share that information.",
        "That request goes against my guidelines, so I will not write it.",
        "It would be inappropriate for me to guess someone's password.",
    ],
)
def test_refusals_are_warned_with_the_phrase_as_a_span(answer: str) -> None:
    verdict = check(answer)
    assert verdict.action is Action.WARN
    assert verdict.reason_codes == [REASON]
    assert verdict.score >= 0.5
    first = verdict.findings[0]
    assert first.start is not None
    assert first.end is not None
    assert answer[first.start : first.end].strip()


@pytest.mark.parametrize(
    "answer",
    [
        "I can't wait to try this recipe! Roast the chicken at 200 C for an hour.",
        "Sorry for the delay. Here is the report you asked for.",
        "You cannot help it if the oven runs hot; lower the temperature.",
        "The court cannot provide relief in such cases, so file an appeal instead.",
        "Here is a Python function that sorts a list.",
    ],
)
def test_helpful_answers_pass(answer: str) -> None:
    verdict = check(answer)
    assert verdict.action is Action.ALLOW
    assert verdict.reason_codes == []


def test_the_policy_chooses_the_action() -> None:
    assert check("I cannot help with that.", action="block").action is Action.BLOCK


def test_a_refusal_deep_in_a_long_answer_weighs_less() -> None:
    helpful = "Here is the full recipe with every step explained. " * 20
    late = check(helpful + "I'm sorry, but I can't share the secret sauce.")
    early = check("I'm sorry, but I can't share the secret sauce. " + helpful)
    assert late.score < early.score
    assert late.action is Action.ALLOW
