"""Rules that find credentials: provider token formats, private keys, passwords in URLs and assignments,
authorization headers, and high-entropy strings.

Each rule is a regular expression whose group ``secret`` (or the whole match) is the credential, a prior
score (how sure a match is, before training calibrates it) and, for the loose rules, a check that throws out
placeholders (``xxxx``, ``<your-key>``, ``${TOKEN}``) and code references (``env.PASSWORD``,
``$_POST["password"]``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from aiguardian.guards.prefixed import PrefixedPattern


@dataclass(frozen=True, slots=True)
class Hit:
    rule: str
    start: int
    end: int
    score: float


def entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    if not value:
        return 0.0
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


_PLACEHOLDER = re.compile(
    r"""^(?:
      .*(?:x{3,}|X{3,}|\*{3,}|\.{3}|_{3,}|0{8,}|<[^>]*>|\$\{|\{\{|%\(|%s|\#\{|\[[^\]]*\]).*
    | .*\b(?:your|example|sample|dummy|placeholder|changeme|redacted|replace|insert|enter)[-_ ]?
         (?:api|secret|token|key|password|pass|here|value)?.*
    | (?:null|none|nil|undefined|true|false|empty|string|str|bytes|required|optional)
    )$""",
    re.IGNORECASE | re.VERBOSE,
)
_CODE_REFERENCE = re.compile(r"[.(\[$]|^[A-Z][A-Z0-9_]*$|^(?:self|this|os|env|process|request|params)\b")


def is_placeholder(value: str) -> bool:
    stripped = value.strip("'\"`")
    return len(stripped) < 3 or len(set(stripped)) <= 2 or bool(_PLACEHOLDER.match(stripped))


_INTERPOLATION = re.compile(r"^\s*[.+$]|\$\{|\{\d*\}")


def literal_value(value: str) -> bool:
    """A quoted literal that is not a placeholder nor a piece of string interpolation."""
    return not is_placeholder(value) and not _INTERPOLATION.search(value)


def unquoted_value(value: str) -> bool:
    """An unquoted value is a credential only if it is not an expression or an environment variable name."""
    return not is_placeholder(value) and not _CODE_REFERENCE.search(value)


def high_entropy(value: str) -> bool:
    """Random-looking: long, several character classes, high entropy, and not a hash or a UUID."""
    if len(value) < 20 or is_placeholder(value):
        return False
    if re.fullmatch(r"[0-9a-fA-F-]+", value):  # hex digests and UUIDs: hashes in lockfiles, ids
        return False
    if re.match(r"(?:sha\d+|md5|blake2b?)[-:]", value, re.IGNORECASE):  # subresource integrity hashes
        return False
    classes = sum(bool(re.search(p, value)) for p in (r"[a-z]", r"[A-Z]", r"[0-9]"))
    if classes < 3 or re.fullmatch(r"[A-Za-z]+(?:[-_./][A-Za-z]+)*\d*", value):
        return False
    return entropy(value) >= 4.0


def keyed_value(value: str) -> bool:
    """A value next to a secret word: a long random-looking token with digits and letters (hex counts)."""
    return (
        len(value) >= 16
        and not is_placeholder(value)
        and entropy(value) >= 3.0
        and any(c.isdigit() for c in value)
        and any(c.isalpha() for c in value)
    )


def auth_value(value: str) -> bool:
    """The credential of an ``Authorization`` header."""
    return len(value) >= 10 and not is_placeholder(value) and entropy(value) >= 3.0


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    regex: re.Pattern[str]
    score: float
    check: Callable[[str], bool] | None = None


def _r(pattern: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile(pattern, flags)


_B = r"(?<![A-Za-z0-9_])"  # token start
_E = r"(?![A-Za-z0-9_])"  # token end
_KEYWORD = (
    r"(?:pass(?:word|wd|phrase)?|pwd|secret|token|api[_.-]?key|apikey|access[_.-]?key|auth[_.-]?key|"
    r"private[_.-]?key|client[_.-]?secret|credentials?|license[_.-]?key|signing[_.-]?key|"
    r"encryption[_.-]?key|master[_.-]?key|session[_.-]?key|secret[_.-]?key|app[_.-]?key|account[_.-]?key|"
    r"shared[_.-]?access[_.-]?key|preshared[_.-]?key|deploy[_.-]?key|webhook[_.-]?url)"
)

# Provider formats: specific enough to stand alone.
PROVIDER_RULES: tuple[Rule, ...] = (
    Rule("private_key", _r(r"-----BEGIN[A-Z0-9 ]{0,30}PRIVATE KEY(?: BLOCK)?-----"), 0.99),
    Rule("private_key", _r(r"LS0tLS1CRUdJTi[A-Za-z0-9+/]{8,}"), 0.95),  # a PEM key, base64-encoded
    Rule(
        "aws_access_key",
        _r(_B + r"(?:A3T[A-Z0-9]|AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA)[A-Z0-9]{16}" + _E),
        0.95,
    ),
    Rule(
        "aws_secret_key",
        _r(
            r"(?i)aws.{0,20}?(?:secret|key).{0,20}?[\"']?\s*(?:=>|[:=])\s*[\"']?(?P<secret>[A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"
        ),
        0.9,
    ),
    Rule("github_token", _r(_B + r"(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,76}" + _E), 0.97),
    Rule("github_token", _r(_B + r"github_pat_[A-Za-z0-9_]{60,}"), 0.97),
    Rule("gitlab_token", _r(_B + r"gl(?:pat|ptt|dt|rt|cbt|soat|ft|imt|agent)-[A-Za-z0-9_-]{20,}"), 0.95),
    Rule("slack_token", _r(_B + r"xox[abposr]-[A-Za-z0-9-]{10,}"), 0.95),
    Rule("slack_token", _r(_B + r"xapp-\d-?[A-Za-z0-9/-]{10,}|xapp-[0-9]{6,}-[A-Za-z0-9/-]{10,}"), 0.95),
    Rule(
        "slack_webhook",
        _r(r"hooks\.slack\.com/(?:services|workflows)/T[A-Za-z0-9_]+/[A-Za-z0-9_]+/[A-Za-z0-9_]+"),
        0.95,
    ),
    Rule(
        "msteams_webhook",
        _r(
            r"\.(?:office|webhook\.office)\.com/webhook[a-z0-9]*/[0-9a-f-]{36}@[0-9a-f-]{36}/IncomingWebhook/[0-9a-f]{32}"
        ),
        0.95,
    ),
    Rule("stripe_key", _r(_B + r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"), 0.95),
    Rule(
        "openai_key",
        _r(_B + r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{16,}T3BlbkFJ[A-Za-z0-9_-]{16,}"),
        0.98,
    ),
    Rule("openai_key", _r(_B + r"sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,}"), 0.95),
    Rule("anthropic_key", _r(_B + r"sk-ant-(?:api|admin)\d{2}-[A-Za-z0-9_-]{32,}"), 0.98),
    Rule("google_api_key", _r(_B + r"AIza[0-9A-Za-z_-]{35}"), 0.95),
    Rule("google_oauth_secret", _r(_B + r"GOCSPX-[A-Za-z0-9_-]{24,}"), 0.95),
    Rule("google_oauth_token", _r(_B + r"ya29\.[0-9A-Za-z_-]{20,}"), 0.9),
    Rule(
        "jwt",
        _r(_B + r"eyJ[A-Za-z0-9_-]{8,}={0,2}\.[A-Za-z0-9_-]{8,}={0,2}\.[A-Za-z0-9_-]{8,}={0,2}"),
        0.9,
    ),
    Rule(
        "grafana_token",
        _r(_B + r"(?:glc_[A-Za-z0-9+/]{32,}={0,2}|glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8})"),
        0.95,
    ),
    Rule("grafana_token", _r(_B + r"eyJrIjoi[A-Za-z0-9+/]{40,}={0,2}"), 0.9),
    Rule("twilio_key", _r(_B + r"(?:SK|AC)[0-9a-f]{32}" + _E), 0.85),
    Rule("sendgrid_key", _r(_B + r"SG\.[A-Za-z0-9_-]{16,32}\.[A-Za-z0-9_-]{30,50}"), 0.97),
    Rule("mailgun_key", _r(_B + r"key-[0-9a-zA-Z]{32}" + _E), 0.9),
    Rule("mailchimp_key", _r(_B + r"[0-9a-f]{32}-us\d{1,2}" + _E), 0.95),
    Rule("npm_token", _r(_B + r"npm_[A-Za-z0-9]{36}" + _E), 0.95),
    Rule("pypi_token", _r(_B + r"pypi-AgE[A-Za-z0-9_-]{50,}"), 0.97),
    Rule("rubygems_key", _r(_B + r"rubygems_[0-9a-f]{48}" + _E), 0.97),
    Rule("nuget_key", _r(_B + r"oy2[a-z0-9]{43}" + _E), 0.9),
    Rule("dockerhub_token", _r(_B + r"dckr_pat_[A-Za-z0-9_-]{20,}"), 0.97),
    Rule("digitalocean_token", _r(_B + r"do[opr]_v1_[a-f0-9]{64}" + _E), 0.97),
    Rule("vault_token", _r(_B + r"hv[sbr]\.[A-Za-z0-9_-]{24,}"), 0.95),
    Rule(
        "vault_token",
        _r(r"(?i)vault[\w-]*[\"'`]?\s*[:=\s]\s*[\"'`]?(?P<secret>[sbr]\.[A-Za-z0-9_-]{24,})"),
        0.9,
    ),
    Rule("terraform_token", _r(_B + r"[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_-]{60,}"), 0.97),
    Rule(
        "doppler_token",
        _r(_B + r"dp\.(?:pt|st|sa|ct|scim|audit)\.(?:[a-z0-9_]{2,35}\.)?[A-Za-z0-9]{40,}"),
        0.97,
    ),
    Rule("shopify_token", _r(_B + r"shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}" + _E), 0.97),
    Rule("huggingface_token", _r(_B + r"hf_[A-Za-z]{34}" + _E), 0.95),
    Rule("groq_key", _r(_B + r"gsk_[A-Za-z0-9]{52}" + _E), 0.97),
    Rule("newrelic_key", _r(_B + r"NR(?:AK|II|AA|JS|RA|RI)-[A-Za-z0-9_-]{19,}"), 0.92),
    Rule("newrelic_key", _r(_B + r"[0-9a-f]{36}NRAL" + _E), 0.92),
    Rule("newrelic_key", _r(_B + r"px-(?:api|dep)-[0-9a-f-]{36}" + _E), 0.85),
    Rule("atlassian_token", _r(_B + r"ATATT3[A-Za-z0-9_=-]{60,}"), 0.97),
    Rule("bitbucket_token", _r(_B + r"ATBB[A-Za-z0-9_=.-]{20,}"), 0.95),
    Rule("postman_key", _r(_B + r"PMAK-[a-f0-9]{24}-[a-f0-9]{34}" + _E), 0.97),
    Rule("telegram_bot_token", _r(_B + r"\d{8,10}:AA[A-Za-z0-9_-]{30,34}" + _E), 0.95),
    Rule("square_token", _r(_B + r"sq0(?:atp|csp)-[A-Za-z0-9_-]{22,43}"), 0.95),
    Rule("square_token", _r(_B + r"EAAA[A-Za-z0-9_-]{60}" + _E), 0.9),
    Rule("facebook_token", _r(_B + r"EAA[A-Za-z0-9]{20,}" + _E), 0.8),
    Rule(
        "azure_key",
        _r(r"(?i)(?:AccountKey|SharedAccessKey|Secret)=(?P<secret>[A-Za-z0-9+/]{20,}={0,2})"),
        0.95,
    ),
    Rule("databricks_token", _r(_B + r"dapi[a-f0-9]{32}(?:-\d)?" + _E), 0.95),
    Rule("dynatrace_token", _r(_B + r"dt0[a-z]\d{2}\.[A-Z0-9]{24}\.[A-Z0-9]{64}" + _E), 0.97),
    Rule("tavily_key", _r(_B + r"tvly-(?:dev-|prod-)?[A-Za-z0-9]{32}" + _E), 0.95),
    Rule("jina_key", _r(_B + r"jina_[a-f0-9]{32}[A-Za-z0-9_-]{20,}"), 0.95),
    Rule("firecrawl_key", _r(_B + r"fc-[a-f0-9]{32}" + _E), 0.9),
    Rule("adafruit_key", _r(_B + r"aio_[A-Za-z0-9]{28}" + _E), 0.9),
    Rule("dtrack_key", _r(_B + r"odt_[A-Za-z0-9]{32,}" + _E), 0.9),
    Rule("segment_token", _r(_B + r"sgp_[A-Za-z0-9]{64}" + _E), 0.9),
    Rule("stackhawk_key", _r(_B + r"hawk\.[A-Za-z0-9_-]{20}\.[A-Za-z0-9_-]{20}" + _E), 0.9),
    Rule("appsync_key", _r(_B + r"da2-[a-z0-9]{26}" + _E), 0.9),
    Rule("twitch_token", _r(_B + r"live_\d{6,}_[A-Za-z0-9]{30}" + _E), 0.9),
    Rule("thingsboard_token", _r(r"thingsboard\.cloud/api/v1/(?P<secret>[a-z0-9]{20})/"), 0.9),
    Rule("cratesio_token", _r(_B + r"cio[A-Za-z0-9]{32}" + _E), 0.85),
    Rule("age_secret_key", _r(_B + r"AGE-SECRET-KEY-1[0-9A-Z]{58}" + _E), 0.99),
    Rule(
        "password_hash",
        _r(r"\$(?:2[abxy]?|1|5|6|8|9|y|7|md5|apr1|argon2(?:id|i|d))\$[^\s$]{1,60}\$[./A-Za-z0-9+=$,]{16,}"),
        0.9,
    ),
    Rule("kerberos_hash", _r(r"\$krb5(?:asrep|tgs|pa)\$\d+\$[^\s]{10,}"), 0.95),
    Rule(
        "kubernetes_bootstrap_token",
        _r(r"(?i)bootstrap[\w-]*token[\"'\s:=]+(?P<secret>[a-z0-9]{6}\.[a-z0-9]{16})" + _E),
        0.9,
    ),
    Rule(
        "wireguard_key", _r(r"(?i)(?:PrivateKey|PresharedKey)\s*=\s*(?P<secret>[A-Za-z0-9+/]{42,43}=)"), 0.95
    ),
)

# Looser rules: a secret word or an auth context, then a value that must pass a check.
CONTEXT_RULES: tuple[Rule, ...] = (
    Rule(
        "url_credentials",
        _r(r"\b[a-zA-Z][a-zA-Z0-9+.-]{1,20}://[^\s:/@\"'<>]{1,64}:(?P<secret>[^\s\"'<>]{2,128})@[\w.-]+"),
        0.9,
        literal_value,
    ),
    Rule(
        "authorization_header",
        _r(r"(?i)\b(?:Bearer|Basic|Token|SSWS|Bot)\b:?\s+(?P<secret>[A-Za-z0-9._~+/=-]{10,})"),
        0.85,
        auth_value,
    ),
    Rule(
        "secret_assignment",
        _r(
            rf"(?i){_KEYWORD}[\w.-]*\\?[\"'`]?\]?[ \t]*(?:=>|:=|==|!=|=|:|\bis\b|(?=[ \t]+\\?[\"'`]))[ \t]*"
            r"\\?(?P<q>[\"'`])(?P<secret>(?:(?!(?P=q))[^\n]){4,200}?)\\?(?P=q)"
        ),
        0.8,
        literal_value,
    ),
    Rule(
        "secret_assignment",
        _r(
            rf"(?i){_KEYWORD}[\w.-]*[ \t]*(?:=>|:=|=|:)[ \t]*"
            r"(?P<secret>[^\s\"'`,;)}\]]{4,200})(?=[\s,;)}\]\"'`]|$)"
        ),
        0.75,
        unquoted_value,
    ),
    Rule(
        "secret_assignment",
        _r(rf"(?i)key=\"[\w.-]*{_KEYWORD}[\w.-]*\"\s+value=\"(?P<secret>[^\"\n]{{3,200}})\""),
        0.8,
        literal_value,
    ),
    Rule(
        "password_statement",
        _r(
            r"(?i)\bpass(?:word|phrase)\b[^\n.]{0,40}?\bis\s*:?\s*(?P<q>[\"'`])(?P<secret>[^\"'`\n]{3,64})(?P=q)"
        ),
        0.75,
        literal_value,
    ),
    Rule(
        "credential_call",
        _r(
            r"(?i)(?:Credential|DirectoryEntry|login|authenticate|connect)\w*\(\s*(?:\"[^\"]*\"\s*,\s*)+"
            r"\"(?P<secret>[^\"\n]{3,100})\"\s*\)"
        ),
        0.8,
        literal_value,
    ),
    Rule(
        "cli_password",
        _r(
            r"(?i)(?:^|\s)(?:-p|-?-password|--pass|--token|--api-key|-Dsonar\.login=|--secret)[ =](?P<secret>[^\s\"'-][^\s\"']{3,})"
        ),
        0.8,
        unquoted_value,
    ),
    Rule(
        "cli_password",
        _r(r"(?:^|\s)-u\s+[^\s:\"']{1,64}:(?P<secret>[^\s\"']{6,})"),
        0.8,
        unquoted_value,
    ),
    Rule(
        "keyed_token",
        _r(
            r"(?i)(?:key|token|secret|sid|login|auth|credential|crumb)[\w-]*[\"'`\s:=,]{0,6}"
            r"(?P<secret>[A-Za-z0-9_+/=.-]{16,})"
        ),
        0.7,
        keyed_value,
    ),
    Rule(
        "high_entropy",
        _r(r"(?<![A-Za-z0-9_+/=.-])[A-Za-z0-9_+/=.-]{20,}(?![A-Za-z0-9_+/=.-])"),
        0.6,
        high_entropy,
    ),
)

RULES: tuple[Rule, ...] = PROVIDER_RULES + CONTEXT_RULES

# Lower-case strings one of which every match of a rule contains: a rule runs only on a text that has one.
# Rules not listed here always run (when the gates below let their group run).
_HINTS: dict[str, tuple[str, ...]] = {
    "private_key": ("private key", "ls0tls1crudjti"),
    "aws_access_key": ("akia", "asia", "a3t", "agpa", "aida", "aroa", "aipa", "anpa", "anva"),
    "aws_secret_key": ("aws",),
    "github_token": ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    "gitlab_token": ("gl",),
    "slack_token": ("xox", "xapp-"),
    "slack_webhook": ("hooks.slack.com",),
    "msteams_webhook": ("webhook",),
    "stripe_key": ("_live_", "_test_"),
    "openai_key": ("sk-",),
    "anthropic_key": ("sk-ant-",),
    "google_api_key": ("aiza",),
    "google_oauth_secret": ("gocspx-",),
    "google_oauth_token": ("ya29.",),
    "jwt": ("eyj",),
    "grafana_token": ("glc_", "glsa_", "eyjrijoi"),
    "twilio_key": ("sk", "ac"),
    "sendgrid_key": ("sg.",),
    "mailgun_key": ("key-",),
    "mailchimp_key": ("-us",),
    "npm_token": ("npm_",),
    "pypi_token": ("pypi-",),
    "rubygems_key": ("rubygems_",),
    "nuget_key": ("oy2",),
    "dockerhub_token": ("dckr_pat_",),
    "digitalocean_token": ("_v1_",),
    "vault_token": ("hvs.", "hvb.", "hvr.", "vault"),
    "terraform_token": (".atlasv1.",),
    "doppler_token": ("dp.",),
    "shopify_token": ("shpat_", "shpca_", "shppa_", "shpss_"),
    "huggingface_token": ("hf_",),
    "groq_key": ("gsk_",),
    "newrelic_key": ("nr", "px-"),
    "atlassian_token": ("atatt3",),
    "bitbucket_token": ("atbb",),
    "postman_key": ("pmak-",),
    "telegram_bot_token": (":aa",),
    "square_token": ("sq0", "eaaa"),
    "facebook_token": ("eaa",),
    "azure_key": ("accountkey=", "sharedaccesskey=", "secret="),
    "databricks_token": ("dapi",),
    "dynatrace_token": ("dt0",),
    "tavily_key": ("tvly-",),
    "jina_key": ("jina_",),
    "firecrawl_key": ("fc-",),
    "adafruit_key": ("aio_",),
    "dtrack_key": ("odt_",),
    "segment_token": ("sgp_",),
    "stackhawk_key": ("hawk.",),
    "appsync_key": ("da2-",),
    "twitch_token": ("live_",),
    "thingsboard_token": ("thingsboard",),
    "cratesio_token": ("cio",),
    "age_secret_key": ("age-secret-key-",),
    "password_hash": ("$",),
    "kerberos_hash": ("$krb5",),
    "kubernetes_bootstrap_token": ("bootstrap",),
    "wireguard_key": ("privatekey", "presharedkey"),
    "url_credentials": ("://",),
    "authorization_header": ("bearer", "basic", "token", "ssws", "bot"),
    "credential_call": ("credential", "directoryentry", "login", "authenticate", "connect"),
    "password_statement": ("pass",),
    "cli_password": ("-p", "-u", "--pass", "--token", "--api-key", "-dsonar.login", "--secret"),
}

# Cheap tests that let most ordinary text skip most rules: every provider format and every random-looking
# token is at least 15 non-space characters long (or a PEM header), and every context rule needs one of these
# words or marks.
_LONG_TOKEN = re.compile(r"\S{15,}")
_CONTEXT_GATE = re.compile(
    r"pass|pwd|secret|token|key|credential|auth|bearer|basic|ssws|bot|login|connect|directoryentry|crumb|sid"
    r"|://|-[pu]\s",
    re.IGNORECASE,
)
_LONG_RULES = (*PROVIDER_RULES, *(r for r in CONTEXT_RULES if r.name in ("keyed_token", "high_entropy")))
_KEYWORD_RULES = tuple(r for r in CONTEXT_RULES if r.name not in ("keyed_token", "high_entropy"))
# Each pattern is tried only where one of its matches can begin (the same matches as finditer, found faster).
_GATE = PrefixedPattern(_CONTEXT_GATE)
_HINT_SETS = {name: frozenset(hints) for name, hints in _HINTS.items()}
_ALL_HINTS = sorted({hint for hints in _HINTS.values() for hint in hints})
_LONG = tuple((rule, PrefixedPattern(rule.regex)) for rule in _LONG_RULES)
_KEYWORDS = tuple((rule, PrefixedPattern(rule.regex)) for rule in _KEYWORD_RULES)


def scan(text: str) -> list[Hit]:
    """Every rule match that passes its check, as the span of the secret value."""
    rules: tuple[tuple[Rule, PrefixedPattern], ...] = ()
    lower = text.lower()
    if _LONG_TOKEN.search(text) or "PRIVATE KEY" in text:
        rules += _LONG
    if _GATE.search(text, lower):
        rules += _KEYWORDS
    hits: list[Hit] = []
    present: set[str] | None = None  # the hints the text has, looked for once
    for rule, pattern in rules:
        hints = _HINT_SETS.get(rule.name)
        if hints is not None:
            if present is None:
                present = {hint for hint in _ALL_HINTS if hint in lower}
            if hints.isdisjoint(present):
                continue
        for m in pattern.finditer(text, lower):
            group = "secret" if "secret" in rule.regex.groupindex else 0
            value = m.group(group)
            if rule.check is not None and not rule.check(value):
                continue
            hits.append(Hit(rule.name, m.start(group), m.end(group), rule.score))
    return hits
