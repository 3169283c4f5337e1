import pytest

from aiguardian.guards.base import Action, Direction, GuardContext
from aiguardian.guards.trust.urls import DENIED, MALFORMED, UNSOURCED, UrlGuard, find_links


def check(
    text: str, sources: list[str] | None = None, direction: Direction = Direction.OUTPUT, **options: object
):
    guard = UrlGuard(**options)  # type: ignore[arg-type]
    return guard.check(GuardContext(text, direction, sources=sources or []))


def test_links_end_before_sentence_punctuation_but_keep_their_own_brackets() -> None:
    text = "See https://docs.python.org/3/library/re.html, or (https://en.wikipedia.org/wiki/Foo_(bar))."
    assert [link.url for link in find_links(text)] == [
        "https://docs.python.org/3/library/re.html",
        "https://en.wikipedia.org/wiki/Foo_(bar)",
    ]


def test_ordinary_links_pass() -> None:
    verdict = check("Read https://docs.python.org/3/ and www.example.org/page for more.")
    assert verdict.action is Action.ALLOW
    assert verdict.findings == []


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://192.168.0.1/admin", DENIED),
        ("http://[::1]:8000/", DENIED),
        ("http://3232235777/", DENIED),
        ("javascript:alert(1)", DENIED),
        ("ftp://files.example.com/a", DENIED),
        ("http://paypal.com@evil.net/login", DENIED),
        ("https://xn--pypal-4ve.com/", DENIED),
        ("https://\u0430pple.com/", DENIED),  # a Cyrillic a
        ("http://-bad-.com/", MALFORMED),
        ("https://example..com/", MALFORMED),
        ("http://example.com:99999/", MALFORMED),
        ("https://exa_mple.com/", MALFORMED),
        ("https://example.c0m/", MALFORMED),
    ],
)
def test_risky_and_malformed_links_are_flagged_with_their_span(url: str, reason: str) -> None:
    text = f"Go to {url} now."
    verdict = check(text)
    assert verdict.action is Action.WARN
    assert verdict.reason_codes == [reason]
    finding = verdict.findings[0]
    assert text[finding.start : finding.end] == url
    assert finding.detail


def test_deny_list_covers_subdomains_only_on_label_boundaries() -> None:
    assert check("https://sub.evil.com/x", deny=["evil.com"]).reason_codes == [DENIED]
    assert check("https://notevil.com/x", deny=["evil.com"]).reason_codes == []


def test_allow_list_denies_every_other_domain() -> None:
    options = {"allow": ["python.org"], "action": "block"}
    assert check("https://docs.python.org/3/", **options).action is Action.ALLOW
    verdict = check("https://example.com/", **options)
    assert verdict.action is Action.BLOCK
    assert verdict.reason_codes == [DENIED]


def test_options_can_allow_ip_addresses_and_other_schemes() -> None:
    assert check("http://10.0.0.5/status", allow_ip=True).findings == []
    assert check("ftp://files.example.com/a", schemes=["https", "ftp"]).findings == []


def test_a_link_missing_from_the_sources_is_unsourced() -> None:
    sources = ["Our docs live at https://docs.example.com/guide/ and nowhere else."]
    verdict = check("See https://docs.example.com/guide and https://made-up.example.org/page", sources)
    assert verdict.reason_codes == [UNSOURCED]
    assert [f.detail for f in verdict.findings] == ["not in the sources"]


def test_without_sources_no_link_counts_as_unsourced() -> None:
    assert check("See https://made-up.example.org/page").findings == []


def test_input_is_checked_only_when_asked() -> None:
    text = "open javascript:alert(1)"
    assert check(text, direction=Direction.INPUT).findings == []
    assert check(text, direction=Direction.INPUT, check_input=True).reason_codes == [DENIED]


def test_a_stream_window_skips_links_it_may_have_cut() -> None:
    cut_end = "Read the docs at https://docs.pyth"
    cut_start = "ps://docs.python.org/3/ has the details."
    assert check(cut_end, direction=Direction.STREAM).findings == []
    assert check(cut_start, direction=Direction.STREAM).findings == []
    assert check(cut_start, direction=Direction.OUTPUT).reason_codes == [DENIED]
    whole = "Read https://-bad-.com/ today."
    assert check(whole, direction=Direction.STREAM).reason_codes == [MALFORMED]
