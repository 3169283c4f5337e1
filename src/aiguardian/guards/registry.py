"""Where each guard lives, by its policy name. Imported lazily so an unused guard costs nothing at start."""

from __future__ import annotations

GUARDS: dict[str, str] = {
    # TrustGuard
    "injection": "aiguardian.guards.trust.injection:InjectionGuard",
    "unicode": "aiguardian.guards.trust.unicode:UnicodeGuard",
    "grounding": "aiguardian.guards.trust.grounding:GroundingGuard",
    "urls": "aiguardian.guards.trust.urls:UrlGuard",
    "refusal": "aiguardian.guards.trust.refusal:RefusalGuard",
    # BiasGuard
    "toxicity": "aiguardian.guards.bias.toxicity:ToxicityGuard",
    "bias": "aiguardian.guards.bias.stereotype:BiasGuard",
    "banned_topics": "aiguardian.guards.bias.topics:BannedTopicsGuard",
    # PII and secrets
    "pii": "aiguardian.guards.pii.guard:PIIGuard",
    "secrets": "aiguardian.guards.secrets.guard:SecretsGuard",
    # ContextGuard (stateless part)
    "messages": "aiguardian.guards.context.validation:MessageGuard",
    "drift": "aiguardian.guards.context.drift:DriftGuard",
}
