"""Guard policies: which guards run on input, output and stream, with which options, for whom.

A policy file is YAML::

    guards:                          # optional: your own guards, by name
      shouting: mypackage.guards:ShoutingGuard
    policies:
      default:
        input:
          - injection                # a registry name alone: the guard with its own defaults
          - guard: pii               # or an entry: pipeline keys + the guard's own options
            action: redact
          - guard: shouting
            fail_open: true
            timeout_ms: 50
        output: [secrets]
        stream: [secrets]            # omitted: the output guards
        history_tokens: 4000         # conversations: at most this much history per turn (omitted: none)
      strict:
        input: [injection, toxicity] # output and stream: those of `default`
    assign:                          # first match wins; no match: `default`
      - {key_id: 5f2c..., policy: strict}
      - {route: /api/v1/*, policy: strict}

Pipeline keys of an entry: ``guard`` (a registry name, a name from ``guards:``, or ``module:Class``), ``name``
(the label in verdicts, default: the guard), ``fail_open``, ``timeout_ms``, ``remote: {url, timeout_ms}``
(ask a guard service over HTTP instead) and ``when: sources`` (run only when the request supplies sources).
Every other key is an option handed to the guard's constructor (``threshold``, ``action``, ...).

A file without ``policies:`` may give ``input``/``output``/``stream`` at the top: that is its default policy.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aiguardian.guards.base import Direction
from aiguardian.guards.registry import GUARDS

DEFAULT_POLICY = "default"
DEFAULT_TIMEOUT_MS = 1000.0
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_LABEL = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class PolicyError(ValueError):
    """A policy that cannot be used; the message names where the problem is."""


class RemoteSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(pattern=r"^https?://[^\s]+$", description="Base URL of a guard service.")
    timeout_ms: float = Field(DEFAULT_TIMEOUT_MS, gt=0, le=600_000)


class GuardSpec(BaseModel):
    """One entry of a policy list. Keys it does not know are the guard's own options."""

    model_config = ConfigDict(extra="allow", frozen=True)

    guard: str = Field(min_length=1, max_length=300)
    name: str | None = Field(None, pattern=_LABEL.pattern)
    fail_open: bool = False
    timeout_ms: float = Field(DEFAULT_TIMEOUT_MS, gt=0, le=600_000)
    remote: RemoteSpec | None = None
    when: Literal["always", "sources"] = "always"

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, value: Any) -> Any:
        return {"guard": value} if isinstance(value, str) else value

    @property
    def label(self) -> str:
        return self.name or self.guard.rpartition(":")[2]

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


GuardList = list[GuardSpec]


class Policy(BaseModel):
    """A direction left out (None) is taken from the default policy; ``stream`` falls back to ``output``."""

    model_config = ConfigDict(extra="forbid")

    input: GuardList | None = None
    output: GuardList | None = None
    stream: GuardList | None = None
    stream_every: int = Field(
        200, ge=1, le=1_000_000, description="Check a stream every this many new characters."
    )
    stream_window: int = Field(
        2000, ge=1, le=1_000_000, description="The last this many characters are what a stream check sees."
    )
    history_tokens: int | None = Field(
        None,
        ge=1,
        le=100_000_000,
        description="Conversations: the most tokens of history sent upstream with a turn, within the model's "
        "context window. Left out: the default policy's (none: the window alone).",
    )


class Assignment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: str
    key_id: str | None = None
    user_id: str | None = None
    route: str | None = Field(None, description="A path, or a prefix ending in `*`.")

    @model_validator(mode="after")
    def _matches_something(self) -> Assignment:
        if self.key_id is None and self.user_id is None and self.route is None:
            raise ValueError("an assignment needs key_id, user_id or route")
        return self

    def matches(self, route: str, key_id: str | None, user_id: str | None) -> bool:
        if self.key_id is not None and self.key_id != key_id:
            return False
        if self.user_id is not None and self.user_id != user_id:
            return False
        if self.route is not None:
            if self.route.endswith("*"):
                return route.startswith(self.route[:-1])
            return route == self.route
        return True


class PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    guards: dict[str, str] = Field(default_factory=dict, description="Extra guard names: module:Class.")
    thread_above_chars: int = Field(
        2000,
        ge=0,
        description="CPU-bound guards run on the event loop for shorter texts, in one worker thread above.",
    )
    policies: dict[str, Policy] = Field(default_factory=dict)
    assign: list[Assignment] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        if isinstance(value, dict) and "policies" not in value:
            own = {
                k: value[k]
                for k in ("input", "output", "stream", "stream_every", "stream_window", "history_tokens")
                if k in value
            }
            if own:
                rest = {k: v for k, v in value.items() if k not in own}
                return {**rest, "policies": {DEFAULT_POLICY: own}}
        return value

    @field_validator("guards")
    @classmethod
    def _targets(cls, value: dict[str, str]) -> dict[str, str]:
        for name, target in value.items():
            if not _LABEL.match(name):
                raise ValueError(f"{name!r} is not a usable guard name")
            if not _TARGET.match(target):
                raise ValueError(f"guards.{name}: {target!r} is not of the form module:Class")
        return value


@dataclass(frozen=True, slots=True)
class Entry:
    """A policy entry ready to run: where the guard lives, how to build it, how to treat its failures."""

    label: str
    target: str  # module:Class ("" for a remote guard)
    options: dict[str, Any]
    fail_open: bool
    timeout_s: float
    remote: RemoteSpec | None
    when: str
    key: str = field(compare=False)  # one instance per target and options


@dataclass(frozen=True, slots=True)
class ResolvedPolicy:
    name: str
    input: tuple[Entry, ...]
    output: tuple[Entry, ...]
    stream: tuple[Entry, ...]
    stream_every: int
    stream_window: int
    history_tokens: int | None = None

    def entries(self, direction: Direction) -> tuple[Entry, ...]:
        if direction is Direction.INPUT:
            return self.input
        if direction is Direction.OUTPUT:
            return self.output
        return self.stream


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Every policy of one file, resolved, and who gets which."""

    file: PolicyFile
    policies: dict[str, ResolvedPolicy]
    source: str
    digest: str

    def named(self, name: str) -> ResolvedPolicy:
        try:
            return self.policies[name]
        except KeyError:
            raise PolicyError(f"there is no policy named {name!r}") from None

    def for_request(self, route: str, key_id: str | None, user_id: str | None) -> ResolvedPolicy:
        for rule in self.file.assign:
            if rule.matches(route, key_id, user_id):
                return self.policies[rule.policy]
        return self.policies[DEFAULT_POLICY]

    def entries(self) -> Iterable[Entry]:
        seen: set[str] = set()
        for policy in self.policies.values():
            for entry in (*policy.input, *policy.output, *policy.stream):
                if entry.key not in seen:
                    seen.add(entry.key)
                    yield entry

    def names(self) -> dict[str, str]:
        """Every guard name this file may use, with where it lives."""
        return {**GUARDS, **self.file.guards}


def _target(spec: GuardSpec, names: dict[str, str], where: str) -> str:
    if spec.remote is not None:
        return ""  # nothing to import: a guard service answers for it
    if spec.guard in names:
        return names[spec.guard]
    if _TARGET.match(spec.guard):
        return spec.guard
    known = ", ".join(sorted(names))
    raise PolicyError(f"{where}: unknown guard {spec.guard!r}; one of {known}, or module:Class")


def _entries(specs: list[GuardSpec], names: dict[str, str], where: str) -> tuple[Entry, ...]:
    out: list[Entry] = []
    labels: set[str] = set()
    for index, spec in enumerate(specs):
        place = f"{where}[{index}]"
        target = _target(spec, names, place)
        if spec.label in labels:
            raise PolicyError(f"{place}: the name {spec.label!r} is used twice; give one a `name`")
        labels.add(spec.label)
        options = spec.options
        try:
            fingerprint = orjson.dumps(options, option=orjson.OPT_SORT_KEYS).decode()
        except TypeError as exc:
            raise PolicyError(f"{place}: options must be plain YAML values ({exc})") from None
        remote = spec.remote
        key = f"remote:{remote.url}" if remote is not None else f"{target}|{fingerprint}"
        out.append(
            Entry(
                label=spec.label,
                target=target,
                options=options,
                fail_open=spec.fail_open,
                timeout_s=(remote.timeout_ms if remote else spec.timeout_ms) / 1000,
                remote=remote,
                when=spec.when,
                key=key,
            )
        )
    return tuple(out)


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error["loc"]) or "(top)"
        parts.append(f"{where}: {error['msg']}")
    more = f" (and {len(exc.errors()) - 3} more)" if len(exc.errors()) > 3 else ""
    return "; ".join(parts) + more


def shipped_default_text() -> str:
    return (resources.files("aiguardian.guards") / "policies" / "default.yaml").read_text(encoding="utf-8")


_shipped: PolicyFile | None = None


def _shipped_default() -> Policy:
    global _shipped
    if _shipped is None:
        _shipped = PolicyFile.model_validate(yaml.safe_load(shipped_default_text()))
    return _shipped.policies[DEFAULT_POLICY]


def parse(text: str, source: str = "<text>") -> PolicySet:
    """Read and check a policy file; :class:`PolicyError` says what is wrong. Guards are not imported here."""
    try:
        raw = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise PolicyError(f"{source}: a policy file is a mapping (policies:, assign:, guards:)")
    try:
        file = PolicyFile.model_validate(raw)
    except ValidationError as exc:
        raise PolicyError(f"{source}: {_validation_message(exc)}") from None
    return resolve(file, source, hashlib.sha256(text.encode()).hexdigest()[:16])


def resolve(file: PolicyFile, source: str, digest: str) -> PolicySet:
    policies = dict(file.policies)
    default = policies.get(DEFAULT_POLICY) or _shipped_default()
    policies[DEFAULT_POLICY] = default
    names = {**GUARDS, **file.guards}
    resolved: dict[str, ResolvedPolicy] = {}
    for name, policy in policies.items():
        if not _LABEL.match(name):
            raise PolicyError(f"{source}: {name!r} is not a usable policy name")
        where = f"{source}: policies.{name}"
        input_specs = policy.input if policy.input is not None else default.input or []
        output_specs = policy.output if policy.output is not None else default.output or []
        if policy.stream is not None:
            stream_specs = policy.stream
        elif policy.output is None and default.stream is not None:
            stream_specs = default.stream
        else:
            stream_specs = output_specs
        resolved[name] = ResolvedPolicy(
            name=name,
            input=_entries(input_specs, names, f"{where}.input"),
            output=_entries(output_specs, names, f"{where}.output"),
            stream=_entries(stream_specs, names, f"{where}.stream"),
            stream_every=policy.stream_every,
            stream_window=policy.stream_window,
            history_tokens=policy.history_tokens
            if policy.history_tokens is not None
            else default.history_tokens,
        )
    for index, rule in enumerate(file.assign):
        if rule.policy not in resolved:
            raise PolicyError(f"{source}: assign[{index}]: there is no policy named {rule.policy!r}")
    return PolicySet(file=file, policies=resolved, source=source, digest=digest)


def shipped() -> PolicySet:
    return parse(shipped_default_text(), "the shipped default policy")
