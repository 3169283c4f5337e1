"""Policy files: the format, inheritance from the default policy, who gets which policy, and clear errors."""

from __future__ import annotations

import pytest

from aiguardian.guards.base import Direction
from aiguardian.guards.policy import PolicyError, parse, shipped
from aiguardian.guards.registry import GUARDS
from tests.fakes.guards import HERE

KEYWORD = f"{HERE}:KeywordGuard"


def labels(entries: tuple[object, ...]) -> list[str]:
    return [e.label for e in entries]  # type: ignore[attr-defined]


def test_shipped_default_policy_is_the_documented_one() -> None:
    default = shipped().named("default")
    assert labels(default.input) == ["messages", "unicode", "injection", "secrets", "pii", "toxicity"]
    assert labels(default.output) == ["secrets", "pii", "urls", "grounding", "refusal"]
    assert labels(default.stream) == ["secrets", "urls", "refusal"]
    by_label = {e.label: e for e in default.input + default.output}
    assert by_label["pii"].target == GUARDS["pii"]
    assert default.input[4].options == {"action": "redact"}
    assert default.output[3].when == "sources"
    assert all(not e.fail_open for e in default.input + default.output + default.stream)


def test_entries_take_pipeline_keys_and_pass_the_rest_to_the_guard() -> None:
    policies = parse(
        f"""
input:
  - guard: {KEYWORD}
    name: shouting
    words: [HEY]
    action: warn
    threshold: 0.7
    fail_open: true
    timeout_ms: 25
"""
    )
    (entry,) = policies.named("default").input
    assert entry.label == "shouting"
    assert entry.target == KEYWORD
    assert entry.options == {"words": ["HEY"], "action": "warn", "threshold": 0.7}
    assert entry.fail_open is True
    assert entry.timeout_s == pytest.approx(0.025)


def test_a_named_policy_takes_the_directions_it_leaves_out_from_default() -> None:
    policies = parse(
        f"""
guards:
  kw: {KEYWORD}
policies:
  default:
    input: [{{guard: kw, words: [a]}}]
    output: [{{guard: kw, words: [b]}}]
    stream: [{{guard: kw, words: [c]}}]
  strict:
    input: [{{guard: kw, words: [x]}}, {{guard: kw, name: kw2, words: [y]}}]
  answers:
    output: [{{guard: kw, words: [z]}}]
"""
    )
    strict = policies.named("strict")
    assert labels(strict.input) == ["kw", "kw2"]
    assert strict.output == policies.named("default").output
    assert strict.stream == policies.named("default").stream
    answers = policies.named("answers")
    assert answers.input == policies.named("default").input
    # A policy with its own output guards and no stream list screens streams with those output guards.
    assert answers.stream == answers.output
    assert answers.output[0].options == {"words": ["z"]}


def test_a_file_without_a_default_policy_gets_the_shipped_one() -> None:
    policies = parse(f"policies:\n  mine:\n    input: [{{guard: '{KEYWORD}', words: [a]}}]\n")
    assert policies.named("default").input == shipped().named("default").input
    assert labels(policies.named("mine").output) == labels(shipped().named("default").output)


def test_assignments_first_match_wins_and_unmatched_requests_get_default() -> None:
    policies = parse(
        """
policies:
  default: {input: []}
  for_key: {input: []}
  for_user: {input: []}
  for_api: {input: []}
assign:
  - {key_id: k1, policy: for_key}
  - {user_id: u1, route: /v1/chat/completions, policy: for_user}
  - {route: /api/v1/*, policy: for_api}
"""
    )
    assert policies.for_request("/v1/chat/completions", "k1", "u1").name == "for_key"
    assert policies.for_request("/v1/chat/completions", "k2", "u1").name == "for_user"
    assert policies.for_request("/v1/embeddings", None, "u1").name == "default"
    assert policies.for_request("/api/v1/validate", "k2", "u2").name == "for_api"
    assert policies.for_request("/v1/chat/completions", None, None).name == "default"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("input: [no_such_guard]", "policies.default.input[0]: unknown guard 'no_such_guard'"),
        ("input: [{guard: injection, timeout_ms: 0}]", "timeout_ms: Input should be greater than 0"),
        ("input: [injection, injection]", "the name 'injection' is used twice"),
        ("input: [{guard: injection, remote: {url: 'ftp://x'}}]", "remote.url"),
        ("assign: [{key_id: k, policy: nope}]", "assign[0]: there is no policy named 'nope'"),
        ("assign: [{policy: default}]", "an assignment needs key_id, user_id or route"),
        ("guards: {mine: 'not a target'}", "not of the form module:Class"),
        ("policies: {default: {inputs: []}}", "inputs: Extra inputs are not permitted"),
        ("input: [injection", "not valid YAML"),
        ("- just a list", "a policy file is a mapping"),
    ],
)
def test_invalid_policies_are_refused_with_where_and_why(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse(text, "guards.yaml")
    assert str(caught.value).startswith("guards.yaml")
    assert message in str(caught.value)


def test_a_remote_entry_needs_no_importable_guard() -> None:
    policies = parse("input: [{guard: anything, remote: {url: 'http://127.0.0.1:9/', timeout_ms: 50}}]")
    (entry,) = policies.named("default").entries(Direction.INPUT)
    assert entry.remote is not None
    assert entry.target == ""
    assert entry.timeout_s == pytest.approx(0.05)


def test_digest_follows_the_text() -> None:
    assert parse("input: []").digest == parse("input: []").digest
    assert parse("input: []").digest != parse("input: [injection]").digest
