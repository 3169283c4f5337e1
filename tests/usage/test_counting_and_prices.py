"""Counting needs no network, and prices come from genai-prices unless the settings override them."""

from __future__ import annotations

import socket
import urllib.request
from decimal import Decimal
from typing import Any

import pytest

from aiguardian.usage import tokens
from aiguardian.usage.prices import PriceBook, from_nanos


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("something tried to reach the network")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    import requests

    monkeypatch.setattr(requests.Session, "request", refuse)
    monkeypatch.setattr(tokens, "_encoding", None)  # build it again, under the ban


def test_counting_is_offline_and_matches_cl100k(no_network: None) -> None:
    assert tokens.count_text("hello world") == 2
    assert tokens.count_text("<|endoftext|>") > 0  # special tokens in user text are plain text
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello world"}]
    per_message = [tokens.count_message(m) for m in messages]
    assert tokens.count_messages(messages) == sum(per_message) + tokens.REPLY_PRIMING
    assert tokens.count_input(["hello world", "hello"]) == 3
    assert tokens.count_input([1, 2, 3]) == 3


async def test_large_inputs_are_counted_off_the_event_loop(no_network: None) -> None:
    text = "word " * 10_000
    assert await tokens.count_text_async(text) == tokens.count_text(text)


def test_cost_of_a_known_model_comes_from_genai_prices() -> None:
    book = PriceBook({})
    nanos = book.cost_nanos("gpt-4o-mini", 1_000_000, 1_000_000, provider="openai")
    assert from_nanos(nanos) == Decimal("0.75")  # $0.15 in + $0.60 out per million
    assert book.context_window("gpt-4o-mini", "openai") == 128_000


def test_an_override_wins_and_an_unknown_model_costs_nothing() -> None:
    book = PriceBook({"gpt-4o-mini": {"input_per_mtok": "1", "output_per_mtok": "2"}})
    assert from_nanos(book.cost_nanos("gpt-4o-mini", 1000, 500, provider="openai")) == Decimal("0.002")
    assert book.cost_nanos("no-such-model-anywhere", 1000, 1000) == 0
