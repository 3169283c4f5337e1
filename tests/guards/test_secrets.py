"""SecretsGuard: provider formats, context rules, placeholders and look-alikes, redaction, training.

Every key below is made up for the test: right shape, no real account behind it.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from aiguardian.guards.base import Action, GuardContext
from aiguardian.guards.secrets.detector import MODEL_FILE, SecretsDetector, scorer, train
from aiguardian.guards.secrets.guard import SecretsGuard
from aiguardian.guards.secrets.rules import entropy, high_entropy

PEM = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c2VyLTQyIiwibmFtZSI6IlRlc3QifQ"
    ".Zk9x3Qp1Lm8Rt2Vb6Nc4Hs7Jd0Wq5Ey9Ua3Io1Pk"
)


def secrets_in(text: str) -> list[tuple[str, str]]:
    return [(s.type, text[s.start : s.end]) for s in SecretsGuard().find(text)]


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("export AWS_ACCESS_KEY_ID=AKIAZ7QW3ER5TY2UI8OP", "aws_access_key", "AKIAZ7QW3ER5TY2UI8OP"),
        (
            "aws_secret_access_key = Zq8vL2nW5xR7tY1uI3oP6aS9dF4gH0jK2lZ5xC8v",
            "aws_secret_key",
            "Zq8vL2nW5xR7tY1uI3oP6aS9dF4gH0jK2lZ5xC8v",
        ),
        (
            "token: ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
            "github_token",
            "ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
        ),
        (
            "SLACK=xoxb-2485710394-9937461028-Qz8Wn3Lp7Rt2Yv5Ks1Xm4Hd6",
            "slack_token",
            "xoxb-2485710394-9937461028-Qz8Wn3Lp7Rt2Yv5Ks1Xm4Hd6",
        ),
        (
            "stripe.api_key = 'sk_live_4eC39HqLyjWDarjtT1zdp7dc'",
            "stripe_key",
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        ),
        (
            "OPENAI_API_KEY=sk-proj-Ab3dE5gH7jK9mN1pQ3sT5vX7zB9dF1hJT3BlbkFJq2W4e6R8t0Y2u4I6o8P0a",
            "openai_key",
            "sk-proj-Ab3dE5gH7jK9mN1pQ3sT5vX7zB9dF1hJT3BlbkFJq2W4e6R8t0Y2u4I6o8P0a",
        ),
        (
            "key sk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Jh1Gf0EdCbA9z8y7x6w5v4u3t2s1r0qPoNmLkJiHgFeDcBa-AA",
            "anthropic_key",
            "sk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Jh1Gf0EdCbA9z8y7x6w5v4u3t2s1r0qPoNmLkJiHgFeDcBa-AA",
        ),
        (
            'maps_key = "AIzaSyD3k9Qw7Er5Ty1Ui3Op5As7Df9Gh1Jk3Lm"',
            "google_api_key",
            "AIzaSyD3k9Qw7Er5Ty1Ui3Op5As7Df9Gh1Jk3Lm",
        ),
        (f"Authorization: Bearer {JWT}", "jwt", JWT),
        (PEM, "private_key", "-----BEGIN OPENSSH PRIVATE KEY-----"),
        ("postgres://app:N0t-So-Secret!@db.internal:5432/prod", "url_credentials", "N0t-So-Secret!"),
        ('DB_PASSWORD = "correct-horse-battery"', "secret_assignment", "correct-horse-battery"),
        ("db:\n  password: Tr0ub4dor&3\n", "secret_assignment", "Tr0ub4dor&3"),
        (
            "curl -H 'Authorization: Basic dXNlcjpwYXNzd29yZDEyMw=='",
            "authorization_header",
            "dXNlcjpwYXNzd29yZDEyMw==",
        ),
        ("docker login -u deploy -p S3cr3tPassw0rd registry.example.com", "cli_password", "S3cr3tPassw0rd"),
    ],
)
def test_finds_the_credential_and_its_kind(text: str, kind: str, value: str) -> None:
    assert (kind, value) in secrets_in(text)


@pytest.mark.parametrize(
    "text",
    [
        "How do I rotate my API keys safely and where should I store a password?",
        "The request id is 3f2b8c1e-7a4d-4e6f-9b0a-1c2d3e4f5a6b and it failed.",
        "lodash@4.17.21: integrity sha512-v2kDEe57lecTulaDIuNTPy3Ry4gLGJ6Z1O3vE1krgXZNrsQ+LFTGHVxVjcXPs17LhbZVGedAJv8XZ1tvj5FvSg==",
        "resolved commit 9fceb02d0ae598e95dc970b74767f19372d61af8 in main",
        "api_key = '<your-api-key>'",
        "OPENAI_API_KEY=sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "password = os.environ['DB_PASSWORD']",
        'token: "${GITHUB_TOKEN}"',
        "license_key: xxxxxxxxxxxxxxx",
        "def login(self, user='', password=''):",
        "cv_results = cross_validate(model, X, y, cv=5)",
    ],
)
def test_leaves_ordinary_text_placeholders_and_hashes_alone(text: str) -> None:
    assert secrets_in(text) == []


def test_high_entropy_needs_randomness_not_just_length() -> None:
    assert high_entropy("q7Ld9Zx2Wv8Rt4Ny6Kp3Hs1Jm5")
    assert not high_entropy("ThisIsALongCamelCaseIdentifierName")
    assert not high_entropy("0123456789abcdef0123456789abcdef")  # hex digest
    assert entropy("aaaa") == 0.0


def test_check_blocks_by_default_and_never_puts_the_value_in_findings() -> None:
    text = "use AKIAZ7QW3ER5TY2UI8OP for the upload"
    verdict = SecretsGuard().check(GuardContext(text))
    assert verdict.action is Action.BLOCK
    assert verdict.reason_codes == ["SECRET_DETECTED"]
    assert [(f.type, f.start, f.end) for f in verdict.findings] == [("aws_access_key", 4, 24)]
    assert "AKIA" not in orjson.dumps(verdict.as_dict()).decode()


def test_check_allows_clean_text() -> None:
    verdict = SecretsGuard().check(GuardContext("Explain the difference between TCP and UDP."))
    assert verdict.action is Action.ALLOW
    assert verdict.findings == []


def test_types_option_limits_what_is_reported() -> None:
    text = f"AKIAZ7QW3ER5TY2UI8OP and {PEM}"
    guard = SecretsGuard(types=["private_key"])
    assert [f.type for f in guard.check(GuardContext(text)).findings] == ["private_key"]


def test_redaction_is_not_restored_by_default() -> None:
    guard = SecretsGuard(action="redact")
    state: dict[str, object] = {}
    text = "deploy with ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8 please"
    verdict = guard.check(GuardContext(text, state=state))
    assert verdict.action is Action.REDACT
    assert verdict.redacted_text == "deploy with [SECRET_1] please"
    assert guard.restore("I used [SECRET_1].", state) == "I used [SECRET_1]."


def test_redaction_round_trips_when_restore_is_on() -> None:
    guard = SecretsGuard(action="redact", restore=True)
    state: dict[str, object] = {}
    text = 'DB_PASSWORD = "correct-horse-battery" and again "correct-horse-battery"'
    redacted = guard.redact(text, state)
    assert "correct-horse-battery" not in redacted
    assert guard.restore(redacted, state) == text


def _write_training_data(root: Path) -> None:
    records = [
        {"text": "aws key AKIAZ7QW3ER5TY2UI8OP", "label": 1},
        {"text": 'password = "hunter2hunter2"', "label": 1},
        {"text": "what is a good password policy?", "label": 0},
        {"text": "print(token_count)", "label": 0},
    ]
    (root / "secrets").mkdir(parents=True)
    (root / "secrets" / "train.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))


def test_training_is_reproducible_and_the_model_loads(tmp_path: Path) -> None:
    _write_training_data(tmp_path / "data")
    outputs = []
    for name in ("a", "b"):
        out = tmp_path / name
        out.mkdir()
        summary = train(tmp_path / "data", out, seed=1)
        assert summary["records"] == 4
        outputs.append((out / MODEL_FILE).read_bytes())
    assert outputs[0] == outputs[1]
    detector = SecretsDetector.load(tmp_path / "a")
    assert detector.score("AKIAZ7QW3ER5TY2UI8OP") > detector.threshold
    results = scorer(tmp_path / "a")([{"id": 0, "text": "AKIAZ7QW3ER5TY2UI8OP"}, {"id": 1, "text": "hello"}])
    assert [r["label"] for r in results] == [1, 0]
