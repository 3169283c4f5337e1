"""Conversations over HTTP: create, list (cursor pages), get with messages, rename, delete, export (JSON and
Markdown), search; private to their owner, readable by admins (audited)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
from fastapi import FastAPI

from aiguardian.conversations import service
from aiguardian.core.bus import EventBus
from tests.conftest import Account, make_account

BASE = "/api/v1/conversations"


async def _create(client: httpx.AsyncClient, account: Account, **body: Any) -> dict[str, Any]:
    response = await client.post(BASE, headers=account.headers, json={"model": "aiguardian-demo", **body})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()["data"]
    return created


async def _say(app: FastAPI, conversation_id: str, *turns: tuple[str, str]) -> None:
    """Store messages as a chat turn stores them (the chat route comes with phase 2)."""
    bus: EventBus = app.state.runtime.bus
    await service.add_messages(
        app.state.runtime.db, bus, conversation_id, [(role, text, None) for role, text in turns]
    )


async def test_create_get_rename_delete(app: FastAPI, client: httpx.AsyncClient, member: Account) -> None:
    created = await _create(
        client, member, title="  Trip plans ", system_prompt="You plan trips.", purpose="Plan a trip to Lyon"
    )
    assert created["title"] == "Trip plans"
    assert created["owner_id"] == member.id
    assert (created["summary"], created["summary_upto"]) == (None, None)
    await _say(app, created["id"], ("user", "Which train?"), ("assistant", "The 8:04 TGV."))

    got = (await client.get(f"{BASE}/{created['id']}", headers=member.headers)).json()["data"]
    assert got["conversation"]["system_prompt"] == "You plan trips."
    messages = got["messages"]["items"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "Which train?"),
        ("assistant", "The 8:04 TGV."),
    ]
    assert all(m["tokens"] > 0 for m in messages)
    assert got["messages"]["older_cursor"] is None
    assert got["conversation"]["updated_at"] > created["updated_at"]

    renamed = await client.patch(f"{BASE}/{created['id']}", headers=member.headers, json={"title": "Lyon"})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["data"]["title"] == "Lyon"
    assert (
        await client.patch(f"{BASE}/{created['id']}", headers=member.headers, json={"title": " "})
    ).status_code == 422

    deleted = await client.delete(f"{BASE}/{created['id']}", headers=member.headers)
    assert deleted.json()["data"] == {"deleted": True}
    gone = await client.get(f"{BASE}/{created['id']}", headers=member.headers)
    assert (gone.status_code, gone.json()["error"]["code"]) == (404, "E2_not_found")
    # Its messages went with it: no search finds them.
    found = await client.get(f"{BASE}/search", params={"q": "TGV"}, headers=member.headers)
    assert found.json()["data"]["items"] == []


async def test_list_pages_by_most_recent_activity(
    app: FastAPI, client: httpx.AsyncClient, member: Account
) -> None:
    made = [await _create(client, member, title=f"c{n}") for n in range(5)]
    await _say(app, made[1]["id"], ("user", "bump"))  # c1 is now the most recently active
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get(BASE, headers=member.headers, params=params)).json()["data"]
        seen += [c["title"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["c1", "c4", "c3", "c2", "c0"]
    titled = (await client.get(BASE, headers=member.headers, params={"q": "C3"})).json()["data"]["items"]
    assert [c["title"] for c in titled] == ["c3"]
    bad = await client.get(BASE, headers=member.headers, params={"cursor": "nonsense"})
    assert (bad.status_code, bad.json()["error"]["code"]) == (422, "E1_validation_error")


async def test_messages_page_backwards_from_the_newest(
    app: FastAPI, client: httpx.AsyncClient, member: Account
) -> None:
    created = await _create(client, member)
    await _say(app, created["id"], *[("user" if n % 2 == 0 else "assistant", f"m{n}") for n in range(7)])
    got = (await client.get(f"{BASE}/{created['id']}", headers=member.headers, params={"limit": 3})).json()[
        "data"
    ]
    assert [m["content"] for m in got["messages"]["items"]] == ["m4", "m5", "m6"]
    contents: list[str] = []
    cursor = got["messages"]["older_cursor"]
    while cursor:
        page = (
            await client.get(
                f"{BASE}/{created['id']}/messages",
                headers=member.headers,
                params={"limit": 3, "cursor": cursor},
            )
        ).json()["data"]
        contents = [m["content"] for m in page["items"]] + contents
        cursor = page["older_cursor"]
    assert contents == ["m0", "m1", "m2", "m3"]


async def test_another_member_sees_nothing_and_an_admin_reads_but_does_not_change(
    app: FastAPI, client: httpx.AsyncClient, member: Account, admin: Account
) -> None:
    created = await _create(client, member, title="private")
    await _say(app, created["id"], ("user", "my secret plan"))
    other = await make_account(app)
    path = f"{BASE}/{created['id']}"
    for method, url, body in (
        ("GET", path, None),
        ("GET", f"{path}/messages", None),
        ("GET", f"{path}/export", None),
        ("PATCH", path, {"title": "mine now"}),
        ("DELETE", path, None),
    ):
        response = await client.request(method, url, headers=other.headers, json=body)
        assert (response.status_code, response.json()["error"]["code"]) == (404, "E2_not_found"), (
            method,
            url,
        )
    assert (await client.get(BASE, headers=other.headers)).json()["data"]["items"] == []
    searched = await client.get(f"{BASE}/search", params={"q": "secret"}, headers=other.headers)
    assert searched.json()["data"]["items"] == []
    for params in ({"user_id": member.id}, {"all_users": "true"}):
        refused = await client.get(BASE, headers=other.headers, params=params)
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, "G2_forbidden")

    # An admin reads it, for audit, and that reading is in the audit log.
    read = await client.get(path, headers=admin.headers)
    assert read.status_code == 200
    assert read.json()["data"]["messages"]["items"][0]["content"] == "my secret plan"
    listed = await client.get(BASE, headers=admin.headers, params={"user_id": member.id})
    assert [c["id"] for c in listed.json()["data"]["items"]] == [created["id"]]
    everyone = await client.get(
        f"{BASE}/search", params={"q": "secret", "all_users": "true"}, headers=admin.headers
    )
    assert [h["conversation_id"] for h in everyone.json()["data"]["items"]] == [created["id"]]
    changed = await client.patch(path, headers=admin.headers, json={"title": "admin's"})
    assert (changed.status_code, changed.json()["error"]["code"]) == (403, "G2_forbidden")
    assert (await client.delete(path, headers=admin.headers)).status_code == 403
    read_by_admin = await _audit_row(
        client, admin, lambda r: r["actor"] == f"user:{admin.id}", action="conversation.read"
    )
    assert (read_by_admin["target"], read_by_admin["status"]) == (created["id"], "ALLOWED")


async def test_export_as_json_and_markdown(app: FastAPI, client: httpx.AsyncClient, member: Account) -> None:
    created = await _create(client, member, title="Recipe", system_prompt="You cook.", purpose="Dinner")
    await _say(app, created["id"], ("user", "Soup?"), ("assistant", "Leek and potato."))
    as_json = await client.get(f"{BASE}/{created['id']}/export", headers=member.headers)
    export = as_json.json()["data"]
    assert export["format"] == "aiguardian.conversation.v1"
    assert export["conversation"]["id"] == created["id"]
    assert [(m["role"], m["content"]) for m in export["messages"]] == [
        ("user", "Soup?"),
        ("assistant", "Leek and potato."),
    ]

    as_markdown = await client.get(
        f"{BASE}/{created['id']}/export", params={"format": "markdown"}, headers=member.headers
    )
    assert as_markdown.status_code == 200
    assert as_markdown.headers["content-type"].startswith("text/markdown")
    assert f'filename="conversation-{created["id"]}.md"' in as_markdown.headers["content-disposition"]
    text = as_markdown.text
    assert text.startswith("# Recipe\n")
    assert "## System prompt\n\nYou cook." in text
    assert (
        text.index("### user")
        < text.index("Soup?")
        < text.index("### assistant")
        < text.index("Leek and potato.")
    )


async def test_search_finds_every_word_newest_first_and_pages(
    app: FastAPI, client: httpx.AsyncClient, member: Account
) -> None:
    first = await _create(client, member, title="one")
    second = await _create(client, member, title="two")
    await _say(app, first["id"], ("user", "The quick brown fox"), ("assistant", "jumps over the lazy dog"))
    await _say(app, second["id"], ("user", "A brown fox again"), ("assistant", "no animals here"))

    async def search(q: str, **params: Any) -> dict[str, Any]:
        response = await client.get(f"{BASE}/search", params={"q": q, **params}, headers=member.headers)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    hits = (await search("FOX brown"))["items"]
    assert [(h["conversation_title"], h["message"]["content"]) for h in hits] == [
        ("two", "A brown fox again"),
        ("one", "The quick brown fox"),
    ]
    assert (await search("fox lazy"))["items"] == []  # every word, in one message
    assert (await search('"fox" OR NEAR(*)'))["items"] == []  # operators are words, not syntax
    page = await search("fox", limit=1)
    assert len(page["items"]) == 1
    rest = await search("fox", limit=1, cursor=page["next_cursor"])
    assert rest["items"][0]["message"]["content"] == "The quick brown fox"
    assert rest["next_cursor"] is None


async def test_a_model_the_key_may_not_use_is_refused(client: httpx.AsyncClient, member: Account) -> None:
    created = await client.post(
        "/api/v1/keys",
        headers=member.headers,
        json={"name": "k", "scopes": ["read", "write"], "models": ["gpt-x"]},
    )
    key = {"X-API-Key": created.json()["data"]["key"]}
    refused = await client.post(BASE, headers=key, json={"model": "aiguardian-demo"})
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "G2_model_not_allowed")
    allowed = await client.post(BASE, headers=key, json={"model": "gpt-x"})
    assert allowed.status_code == 201


async def _audit_row(
    client: httpx.AsyncClient, admin: Account, wanted: Callable[[dict[str, Any]], bool], **params: str
) -> dict[str, Any]:
    """The audit row matching ``params`` and ``wanted``, once the batch writer has stored it."""
    async with asyncio.timeout(10):
        while True:
            rows = (await client.get("/api/v1/audit", headers=admin.headers, params=params)).json()["data"][
                "items"
            ]
            found: list[dict[str, Any]] = [row for row in rows if wanted(row)]
            if found:
                return found[0]
            await asyncio.sleep(0.05)
