"""Prices: overrides from the settings first, then genai-prices' bundled snapshot (never updated over the
network). Money is ``Decimal`` and is rounded to whole nano-dollars, the unit stored in the database, so
the ledger adds up exactly to the costs the answers reported.

A model with no override and unknown to genai-prices costs 0: the request is served, ``X-AIG-Cost`` says
0, and a warning is logged once per model, so an operator can add an override.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import genai_prices
import structlog

log = structlog.get_logger("aiguardian.usage")

NANO = Decimal("0.000000001")
NANOS_PER_USD = 1_000_000_000
MTOK = Decimal(1_000_000)
_LINEAR_BELOW = 100_000


def to_nanos(usd: Decimal) -> int:
    return int((usd / NANO).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def from_nanos(nanos: int) -> Decimal:
    return (Decimal(nanos) * NANO).quantize(NANO)


@dataclass(frozen=True)
class PriceOverride:
    input_per_mtok: Decimal
    output_per_mtok: Decimal


class PriceBook:
    def __init__(self, overrides: dict[str, Any]) -> None:
        self.overrides = {
            model: PriceOverride(
                Decimal(str(spec.get("input_per_mtok", 0))), Decimal(str(spec.get("output_per_mtok", 0)))
            )
            for model, spec in overrides.items()
        }
        self._unknown_warned: set[str] = set()
        self._unit_prices: dict[tuple[str, str | None], tuple[Decimal, Decimal] | None] = {}
        self._windows: dict[tuple[str, str | None], int | None] = {}

    def _lookup(self, model: str, provider: str | None, prompt: int, completion: int) -> Decimal | None:
        """genai-prices' price. Below ``_LINEAR_BELOW`` tokens the per-token prices are asked once per model
        and cached: a full ``calc_price`` costs tens of microseconds, too much for every request. Tiered
        prices (some models charge more past 128k or 200k tokens) start above that bound, where the full
        calculation still runs."""
        if prompt + completion >= _LINEAR_BELOW:
            return self._calc(model, provider, prompt, completion)
        key = (model, provider)
        if key not in self._unit_prices:
            per_input = self._calc(model, provider, 1_000_000, 0)
            per_output = self._calc(model, provider, 0, 1_000_000)
            self._unit_prices[key] = (
                None if per_input is None or per_output is None else (per_input, per_output)
            )
        units = self._unit_prices[key]
        if units is None:
            return None
        return (units[0] * prompt + units[1] * completion) / MTOK

    def _calc(self, model: str, provider: str | None, prompt: int, completion: int) -> Decimal | None:
        usage = genai_prices.Usage(input_tokens=prompt, output_tokens=completion)
        try:
            if provider and provider != "demo":
                return genai_prices.calc_price(usage, model, provider_id=provider).total_price
            return genai_prices.calc_price(usage, model).total_price
        except LookupError:
            return None

    def cost_nanos(
        self,
        model: str,
        prompt: int,
        completion: int,
        *,
        provider: str | None = None,
        upstream: str | None = None,
    ) -> int:
        """The cost of a call in nano-dollars; ``model`` is the public name, ``upstream`` the provider's."""
        for name in (model, upstream):
            override = self.overrides.get(name) if name else None
            if override is not None:
                usd = (override.input_per_mtok * prompt + override.output_per_mtok * completion) / MTOK
                return to_nanos(usd)
        for name in dict.fromkeys(n for n in (upstream, model) if n):
            price = self._lookup(name, provider, prompt, completion)
            if price is not None:
                return to_nanos(price)
        if model not in self._unknown_warned:
            self._unknown_warned.add(model)
            log.warning("no price known for model; its cost is counted as 0", model=model)
        return 0

    def context_window(self, model: str, provider: str | None = None) -> int | None:
        """genai-prices' context window of a model, when it knows one (looked up once per model)."""
        key = (model, provider)
        if key not in self._windows:
            self._windows[key] = self._find_window(model, provider)
        return self._windows[key]

    def _find_window(self, model: str, provider: str | None) -> int | None:
        try:
            usage = genai_prices.Usage(input_tokens=0, output_tokens=0)
            found = (
                genai_prices.calc_price(usage, model, provider_id=provider)
                if provider and provider != "demo"
                else genai_prices.calc_price(usage, model)
            )
        except LookupError:
            return None
        window = found.model.context_window
        return int(window) if window else None
