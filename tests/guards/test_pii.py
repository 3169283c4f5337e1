"""PIIGuard: validated patterns, the shipped tagger, reversible redaction, training and the scoring command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from aiguardian.guards.base import Action, GuardContext
from aiguardian.guards.pii import patterns
from aiguardian.guards.pii.detector import train
from aiguardian.guards.pii.guard import PIIGuard, shared_detector
from aiguardian.guards.pii.placeholders import replace_spans, restore
from aiguardian.guards.pii.tagger import TrainingOptions, decode, encode

SHARED_TRAIN = Path(__file__).resolve().parents[3] / "shared" / "eval" / "pii" / "train.jsonl"


def found(text: str) -> set[tuple[str, str]]:
    return {(m.type, text[m.start : m.end]) for m in patterns.find(text)}


def detected(text: str) -> set[tuple[str, str]]:
    return {(e.type, text[e.start : e.end]) for e in shared_detector().detect(text)}


# Validation


@pytest.mark.parametrize("number", ["4539 1488 0343 6467", "5500-0000-0000-0004", "378282246310005"])
def test_luhn_accepts_valid_card_numbers(number: str) -> None:
    assert patterns.luhn_valid(number)


@pytest.mark.parametrize("number", ["4539 1488 0343 6468", "1234567812345678", ""])
def test_luhn_rejects_a_wrong_check_digit(number: str) -> None:
    assert not patterns.luhn_valid(number)


def test_iban_mod97_accepts_valid_ibans_with_or_without_spaces() -> None:
    assert patterns.iban_valid("GB82 WEST 1234 5698 7654 32")
    assert patterns.iban_valid("de89370400440532013000")


@pytest.mark.parametrize(
    "iban",
    [
        "GB82 WEST 1234 5698 7654 33",
        "GB82WEST123456987654",
        "ZZ82WEST12345698765432",
        "GB82WEST1234569876543!",
    ],
)
def test_iban_rejects_a_wrong_checksum_length_or_country(iban: str) -> None:
    assert not patterns.iban_valid(iban)


def test_ssn_rejects_impossible_areas_groups_and_serials() -> None:
    assert patterns.ssn_valid("536-22-1234")
    for bad in ("000-22-1234", "666-22-1234", "936-22-1234", "536-00-1234", "536-22-0000"):
        assert not patterns.ssn_valid(bad)


# Patterns, positives and negatives per type


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("write to jane.doe+news@mail.example.com today", "EMAIL", "jane.doe+news@mail.example.com"),
        ("see https://shop.example.org/cart?id=7.", "DOMAIN_NAME", "https://shop.example.org/cart?id=7"),
        ("the server is 192.168.10.24 now", "IP_ADDRESS", "192.168.10.24"),
        ("or 2001:db8:85a3::8a2e:370:7334 on v6", "IP_ADDRESS", "2001:db8:85a3::8a2e:370:7334"),
        ("card 4539 1488 0343 6467 expired", "CREDIT_CARD", "4539 1488 0343 6467"),
        ("pay to DE89 3704 0044 0532 0130 00 please", "IBAN", "DE89 3704 0044 0532 0130 00"),
        ("my SSN is 536-22-1234", "SSN", "536-22-1234"),
        ("call me on +1 (415) 555-2671 tonight", "PHONE", "+1 (415) 555-2671"),
        ("born 1984-03-17 in spring", "DATE_TIME", "1984-03-17"),
    ],
)
def test_pattern_finds_a_valid_value(text: str, kind: str, value: str) -> None:
    assert (kind, value) in found(text)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("no mail here: user at example dot com", "EMAIL"),
        ("version 999.12.3.1 of the tool", "IP_ADDRESS"),
        ("order 4539 1488 0343 6468 was shipped", "CREDIT_CARD"),
        ("reference GB82 WEST 1234 5698 7654 33", "IBAN"),
        ("ticket 000-12-3456", "SSN"),
        ("it costs 12 euros", "PHONE"),
    ],
)
def test_pattern_ignores_a_look_alike(text: str, kind: str) -> None:
    assert kind not in {k for k, _ in found(text)}


@pytest.mark.parametrize(
    ("text", "scheme", "value"),
    [
        ("NI number AB 12 34 56 C on file", "UK_NINO", "AB 12 34 56 C"),
        ("DNI 12345678Z del titular", "ES_DNI", "12345678Z"),
        ("codice fiscale RSSMRA85T10A562S", "IT_FISCAL_CODE", "RSSMRA85T10A562S"),
        ("my SIN is 046 454 286", "CA_SIN", "046 454 286"),
        ("ITIN 912-78-1234 for taxes", "US_ITIN", "912-78-1234"),
    ],
)
def test_national_ids_are_found_with_their_scheme(text: str, scheme: str, value: str) -> None:
    matches = [m for m in patterns.find(text) if m.type == patterns.NATIONAL_ID]
    assert [(m.detail, text[m.start : m.end]) for m in matches] == [(scheme, value)]


def test_national_ids_need_a_valid_check_character_or_their_keyword() -> None:
    assert not any(m.type == patterns.NATIONAL_ID for m in patterns.find("DNI 12345678A del titular"))
    # A Luhn-valid nine-digit number is a Canadian SIN only when someone says so.
    assert not any(m.detail == "CA_SIN" for m in patterns.find("order 046 454 286 shipped"))


def test_aadhaar_needs_the_verhoeff_digit() -> None:
    body = "49961234567"
    valid = next(body + d for d in "0123456789" if patterns.verhoeff_valid(body + d))
    invalid = body + str((int(valid[-1]) + 1) % 10)
    text = "aadhaar {} and aadhaar {}"
    got = [m for m in patterns.find(text.format(valid, invalid)) if m.detail == "IN_AADHAAR"]
    assert len(got) == 1
    assert text.format(valid, invalid)[got[0].start : got[0].end] == valid


# The shipped tagger


def test_tagger_finds_names_and_places_in_new_sentences() -> None:
    text = "Olivia Hernandez flew from Lisbon to meet Tomasz Wojcik."
    assert {("PERSON", "Olivia Hernandez"), ("LOCATION", "Lisbon"), ("PERSON", "Tomasz Wojcik")} <= detected(
        text
    )


def test_tagger_finds_lower_case_names() -> None:
    assert ("PERSON", "olivia hernandez") in detected("please add olivia hernandez as a guardian")


def test_tagger_finds_an_address() -> None:
    text = "Please send the parcel to 221 Baker Street, London NW1 6XE before Friday."
    spans = [(k, v) for k, v in detected(text) if k == "ADDRESS"]
    assert spans
    assert any("Baker Street" in v for _, v in spans)


@pytest.mark.parametrize(
    "text",
    [
        "The weather is lovely and the meeting went well.",
        "how do i sort a list of tuples by the second item?",
        "The [ORGANIZATION] office is at [ADDRESS]",
        "",
    ],
)
def test_tagger_leaves_text_without_pii_alone(text: str) -> None:
    assert detected(text) == set()


def test_a_card_written_in_groups_is_one_entity() -> None:
    text = "my card is 4539 1488 0343 6467, thanks"
    assert ("CREDIT_CARD", "4539 1488 0343 6467") in detected(text)


def test_bilou_labels_round_trip_through_decode() -> None:
    tokens = [(0, 4), (5, 9), (10, 12), (13, 19)]
    labels = encode(tokens, [(0, 9, "PERSON"), (13, 19, "LOCATION")])
    assert labels == ["B-PERSON", "L-PERSON", "O", "U-LOCATION"]
    assert [(k, s, e) for k, s, e, _, _ in decode(labels, tokens)] == [("PERSON", 0, 9), ("LOCATION", 13, 19)]


# The guard and its redaction


def test_check_redacts_by_default_and_reports_spans() -> None:
    text = "Mail Olivia at olivia.h@example.org"
    verdict = PIIGuard().check(GuardContext(text))
    assert verdict.action is Action.REDACT
    assert verdict.reason_codes == ["PII_DETECTED"]
    assert ("EMAIL", "olivia.h@example.org") in {(f.type, text[f.start : f.end]) for f in verdict.findings}
    assert verdict.redacted_text is not None
    assert "olivia.h@example.org" not in verdict.redacted_text
    assert "[EMAIL_1]" in verdict.redacted_text


def test_check_allows_text_without_pii() -> None:
    verdict = PIIGuard().check(GuardContext("Summarise the plot of the play in three sentences."))
    assert verdict.action is Action.ALLOW
    assert verdict.findings == []


def test_entities_option_limits_the_types_and_action_can_block() -> None:
    text = "Olivia Hernandez, olivia.h@example.org"
    guard = PIIGuard(entities=["email"], action="block")
    verdict = guard.check(GuardContext(text))
    assert {f.type for f in verdict.findings} == {"EMAIL"}
    assert verdict.action is Action.BLOCK


def test_unknown_entity_type_is_refused() -> None:
    with pytest.raises(ValueError, match="SHOE_SIZE"):
        PIIGuard(entities=["shoe_size"])


def test_threshold_keeps_only_confident_tagged_entities() -> None:
    text = "Yesterday Olivia Hernandez flew from Lisbon."
    scored = PIIGuard(threshold=0.01).find(text)
    assert scored
    assert all(0.01 <= e.score <= 1.0 for e in scored)
    assert PIIGuard(threshold=1.01).find(text) == []


def test_redact_then_restore_gives_back_the_original() -> None:
    guard = PIIGuard()
    state: dict[str, object] = {}
    text = "I am Olivia Hernandez, card 4539 1488 0343 6467, mail olivia.h@example.org."
    redacted = guard.redact(text, state)
    assert "4539" not in redacted
    assert "olivia.h@example.org" not in redacted
    assert guard.restore(redacted, state) == text


def test_same_value_gets_the_same_placeholder_within_a_request() -> None:
    guard = PIIGuard(entities=["EMAIL"])
    state: dict[str, object] = {}
    first = guard.redact("from a.b@example.com", state)
    second = guard.redact("cc a.b@example.com and c.d@example.com", state)
    assert first == "from [EMAIL_1]"
    assert second == "cc [EMAIL_1] and [EMAIL_2]"


def test_restore_handles_repeats_and_the_forms_a_model_writes_back() -> None:
    state: dict[str, object] = {}
    replace_spans("mail a.b@example.com", [(5, 20, "EMAIL")], state, "pii")
    answer = "Sure: [EMAIL_1], again [EMAIL_1], [email_1] and [ EMAIL 1 ]; [EMAIL_9] is unknown."
    expected = "Sure: a.b@example.com, again a.b@example.com, a.b@example.com and a.b@example.com; [EMAIL_9] is unknown."
    assert restore(answer, state, "pii") == expected


def test_a_placeholder_already_in_the_callers_text_is_not_reused() -> None:
    state: dict[str, object] = {}
    text = "keep [EMAIL_1] literally, mail a.b@example.com"
    redacted = replace_spans(text, [(31, 46, "EMAIL")], state, "pii")
    assert redacted == "keep [EMAIL_1] literally, mail [EMAIL_2]"
    assert restore(redacted, state, "pii") == text


# Training and the scoring command


@pytest.mark.skipif(not SHARED_TRAIN.exists(), reason="shared/eval is not beside the checkout")
def test_training_is_reproducible_with_a_seed(tmp_path: Path) -> None:
    lines = SHARED_TRAIN.read_bytes().splitlines()[:60]
    (tmp_path / "data" / "pii").mkdir(parents=True)
    (tmp_path / "data" / "pii" / "train.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    options = TrainingOptions(max_iterations=10)
    outputs = []
    for name in ("a", "b"):
        out = tmp_path / name
        out.mkdir()
        train(tmp_path / "data", out, seed=7, options=options)
        outputs.append(out)
    for filename in ("pii.crfsuite", "pii.gazetteer.json"):
        assert (outputs[0] / filename).read_bytes() == (outputs[1] / filename).read_bytes()
        assert (outputs[0] / filename).stat().st_size > 0


def test_score_command_writes_one_json_line_per_record() -> None:
    records = [
        {"id": 0, "text": "write to olivia.h@example.org"},
        {"id": 1, "text": "nothing personal here"},
    ]
    payload = b"".join(orjson.dumps(r) + b"\n" for r in records)
    result = subprocess.run(
        [sys.executable, "-m", "aiguardian", "guards", "score", "pii"],
        input=payload,
        capture_output=True,
        check=True,
        timeout=120,
    )
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 2
    assert {"start": 9, "end": 29, "type": "EMAIL"} in lines[0]["spans"]
    assert lines[1] == {"spans": []}
