"""UrlGuard: the links in an answer (and, if asked, in the input).

Each link is checked for: a scheme other than http(s) (``javascript:``, ``data:``, ``file:`` ...), a host that is
an IP address, credentials before the host (``https://bank.com@evil.example``), a look-alike host (punycode or
non-ASCII letters), a domain on the policy's deny list or missing from its allow list (a listed domain covers
its subdomains), a malformed link (bad host labels, no top-level domain, an impossible port), and, when the
request supplied sources, a link that none of them contains (a link the model made up).
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import SplitResult, urlsplit

from aiguardian.guards.base import Action, Direction, Finding, GuardContext, Verdict

DENIED = "TRUST_URL_DENIED"
MALFORMED = "TRUST_URL_MALFORMED"
UNSOURCED = "TRUST_URL_UNSOURCED"

# A scheme followed by "//", the schemes that run or embed content without "//", or a bare "www." host.
_URL = re.compile(
    r"(?<![\w@.])(?:[a-z][a-z0-9+.\-]{1,15}://|(?:javascript|data|vbscript|file):|www\.)[^\s<>\"'`]*",
    re.IGNORECASE,
)
_TRAILING = ".,;:!?)]}*_'\""
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_TLD = re.compile(r"^(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})$")
_ACTIVE_SCHEMES = frozenset({"javascript", "data", "vbscript", "file", "ftp", "ws", "wss"})
_NUMERIC_HOST = re.compile(r"^(?:0x[0-9a-f]+|\d+)(?:\.(?:0x[0-9a-f]+|\d+)){0,3}$")


@dataclass(frozen=True, slots=True)
class Link:
    url: str
    start: int
    end: int


def find_links(text: str) -> list[Link]:
    links = []
    for m in _URL.finditer(text):
        url = m.group()
        # Closing punctuation belongs to the sentence, unless the link opened the bracket itself.
        while url and url[-1] in _TRAILING and not (url[-1] == ")" and url.count("(") >= url.count(")")):
            url = url[:-1]
        if url:
            links.append(Link(url, m.start(), m.start() + len(url)))
    return links


def _domain_matches(host: str, domains: Iterable[str]) -> str | None:
    for d in domains:
        if host == d or host.endswith("." + d):
            return d
    return None


def _normalise(url: str) -> str:
    """Scheme, ``www.``, a trailing slash and the fragment do not make two links different."""
    u = url.lower().split("#", 1)[0]
    u = re.sub(r"^[a-z][a-z0-9+.\-]*://", "", u)
    u = u.removeprefix("www.")
    return u.rstrip("/")


class UrlGuard:
    """Flags denied, malformed and (with sources) unsourced links.

    Options: ``deny`` and ``allow`` (domain lists; with ``allow`` set, any other domain is denied), ``schemes``
    (default http, https), ``allow_ip`` (default false), ``allow_idn`` (non-ASCII or punycode hosts, default
    false), ``check_sources`` (default true: with sources, a link they do not contain is ``TRUST_URL_UNSOURCED``),
    ``check_input`` (default false: only answers are checked), ``action`` (default ``warn``) and
    ``unsourced_action`` (default: ``action``).
    """

    name: ClassVar[str] = "urls"
    cpu_bound: ClassVar[bool] = False
    deterministic: ClassVar[bool] = True  # same options and context, same verdict: the pipeline may reuse it

    def __init__(
        self,
        deny: list[str] | None = None,
        allow: list[str] | None = None,
        schemes: list[str] | None = None,
        allow_ip: bool = False,
        allow_idn: bool = False,
        check_sources: bool = True,
        check_input: bool = False,
        action: str = "warn",
        unsourced_action: str | None = None,
        threshold: float = 0.5,
    ) -> None:
        self.deny = tuple(d.lower().strip(".") for d in deny or ())
        self.allow = tuple(d.lower().strip(".") for d in allow or ())
        self.schemes = frozenset(s.lower() for s in (schemes or ("http", "https")))
        self.allow_ip = allow_ip
        self.allow_idn = allow_idn
        self.check_sources = check_sources
        self.check_input = check_input
        self.action = Action(action)
        self.unsourced_action = Action(unsourced_action) if unsourced_action else self.action
        self.threshold = threshold

    def check(self, context: GuardContext) -> Verdict:
        started = time.perf_counter()
        verdict = Verdict(self.name)
        if context.direction is not Direction.INPUT or self.check_input:
            sourced = self._sourced(context.sources) if self.check_sources and context.sources else None
            action = Action.ALLOW
            text = context.text
            for link in find_links(text):
                if context.direction is Direction.STREAM and self._maybe_cut(link, text):
                    continue
                problem = self.problem(link.url)
                if problem is None and sourced is not None and not self._in_sources(link.url, sourced):
                    problem = (UNSOURCED, "not in the sources")
                if problem is None:
                    continue
                reason, detail = problem
                verdict.findings.append(Finding(reason.lower(), link.start, link.end, detail=detail))
                if reason not in verdict.reason_codes:
                    verdict.reason_codes.append(reason)
                chosen = self.unsourced_action if reason == UNSOURCED else self.action
                action = max(action, chosen, key=lambda a: a.rank)
            if verdict.findings:
                verdict.score = 1.0
                verdict.action = action if verdict.score >= self.threshold else Action.ALLOW
        verdict.elapsed_ms = (time.perf_counter() - started) * 1000
        return verdict

    def problem(self, url: str) -> tuple[str, str] | None:
        """``(reason, detail)`` for a link that breaks a rule, or None."""
        if url.lower().startswith("www."):
            url = "http://" + url
        scheme = url.split(":", 1)[0].lower()
        if scheme not in self.schemes:
            return DENIED, f"scheme {scheme}: not allowed"
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            return MALFORMED, str(exc)
        host = (parts.hostname or "").rstrip(".")
        if not host:
            return MALFORMED, "no host"
        if parts.username is not None or parts.password is not None:
            return DENIED, "credentials before the host"
        if port == 0:
            return MALFORMED, "port 0"
        if self._is_ip(parts, host):
            return None if self.allow_ip else (DENIED, "an IP address instead of a domain")
        if not host.isascii() or any(label.startswith("xn--") for label in host.split(".")):
            if not self.allow_idn and not _domain_matches(host, self.allow):
                return DENIED, "look-alike host (punycode or non-ASCII letters)"
        elif (detail := self._malformed_host(host)) is not None:
            return MALFORMED, detail
        if denied := _domain_matches(host, self.deny):
            return DENIED, f"domain {denied} is denied"
        if self.allow and not _domain_matches(host, self.allow):
            return DENIED, f"domain {host} is not allowed"
        return None

    def _maybe_cut(self, link: Link, text: str) -> bool:
        """In a stream window, a link that runs into the window's end may not be complete yet, and one at its
        start with an unknown scheme is the tail of a link the window cut ("ps://..."): later checks see them
        whole."""
        if link.end == len(text):
            return True
        scheme = link.url.split(":", 1)[0].lower()
        return link.start == 0 and scheme not in self.schemes and scheme not in _ACTIVE_SCHEMES

    @staticmethod
    def _is_ip(parts: SplitResult, host: str) -> bool:
        if parts.netloc.split("@")[-1].startswith("["):
            return True
        try:
            ipaddress.ip_address(host)
            return True
        except ValueError:
            return bool(_NUMERIC_HOST.match(host))  # 3232235777, 0x7f.1: numbers that browsers read as IPs

    @staticmethod
    def _malformed_host(host: str) -> str | None:
        if len(host) > 253:
            return "host longer than 253 characters"
        labels = host.split(".")
        if len(labels) < 2 and host != "localhost":
            return "no top-level domain"
        for label in labels:
            if not _LABEL.match(label):
                return f"invalid host label {label!r}" if label else "empty host label"
        if host != "localhost" and not _TLD.match(labels[-1]):
            return f"invalid top-level domain {labels[-1]!r}"
        return None

    @staticmethod
    def _sourced(sources: list[str]) -> tuple[set[str], str]:
        joined = "\n".join(sources)
        return {_normalise(link.url) for link in find_links(joined)}, joined.lower()

    @staticmethod
    def _in_sources(url: str, sourced: tuple[set[str], str]) -> bool:
        links, text = sourced
        norm = _normalise(url)
        return norm in links or norm in text
