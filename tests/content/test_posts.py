"""Posts over HTTP: CRUD, visibility of drafts, ownership, filters, cursor, full-text search, hostile input."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from aiguardian.content.models import Post, PostTag
from aiguardian.identity.models import User
from tests.conftest import Account, make_account

URL = "/api/v1/posts"

HOSTILE = [
    "' OR 1=1 --",
    '"; DROP TABLE posts; --',
    "1; DELETE FROM posts",
    "%",
    "_",
    "*",
    '"',
    "NEAR(",
    "title:",
    "body:x OR title:y",
    "a) OR (1=1",
    "\\",
    "'",
    "x' UNION SELECT id, email, password_hash FROM users --",
    "-x",
    "^x",
    "zebra*",
    "日本語 café",
]


async def create(client: httpx.AsyncClient, account: Account, **fields: Any) -> dict[str, Any]:
    payload = {"title": "a title", "body": "", **fields}
    response = await client.post(URL, json=payload, headers=account.headers)
    assert response.status_code == 201, response.text
    return response.json()["data"]  # type: ignore[no-any-return]


async def listing(client: httpx.AsyncClient, account: Account, **params: Any) -> dict[str, Any]:
    response = await client.get(URL, params=params, headers=account.headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]  # type: ignore[no-any-return]


def ids(page: dict[str, Any]) -> list[int]:
    return [item["id"] for item in page["items"]]


async def count_rows(app: FastAPI, model: type[Any]) -> int:
    async with app.state.runtime.db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


@pytest.fixture
async def other(app: FastAPI) -> Account:
    return await make_account(app, "member")


# -- CRUD ------------------------------------------------------------------------------------------------------


async def test_create_read_update_delete(client: httpx.AsyncClient, member: Account) -> None:
    response = await client.post(
        URL, json={"title": "  First post ", "body": "Hello there.", "tags": ["News"]}, headers=member.headers
    )
    assert response.status_code == 201
    created = response.json()["data"]
    assert created["title"] == "First post"
    assert created["body"] == "Hello there."
    assert created["tags"] == ["news"]
    assert created["author_id"] == member.id
    assert created["status"] == "draft"
    assert created["published_at"] is None
    assert created["created_at"] == created["updated_at"]
    post_url = f"{URL}/{created['id']}"

    fetched = await client.get(post_url, headers=member.headers)
    assert fetched.status_code == 200
    assert fetched.json()["data"] == created

    patched = await client.patch(
        post_url, json={"title": "Renamed", "status": "published", "tags": []}, headers=member.headers
    )
    assert patched.status_code == 200, patched.text
    updated = patched.json()["data"]
    assert updated["title"] == "Renamed"
    assert updated["body"] == "Hello there."
    assert updated["tags"] == []
    assert updated["status"] == "published"
    assert updated["published_at"] is not None
    assert updated["updated_at"] > created["updated_at"]
    assert (await client.get(post_url, headers=member.headers)).json()["data"] == updated

    deleted = await client.delete(post_url, headers=member.headers)
    assert deleted.status_code == 200
    assert deleted.json()["data"] == {"deleted": True}
    missing = await client.get(post_url, headers=member.headers)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "E2_not_found"
    again = await client.delete(post_url, headers=member.headers)
    assert again.status_code == 404


async def test_tags_are_normalised_and_deduplicated(client: httpx.AsyncClient, member: Account) -> None:
    post = await create(client, member, tags=["Python", "  machine \t learning ", "python", "web-dev_2"])
    assert post["tags"] == ["machine learning", "python", "web-dev_2"]


async def test_returning_to_draft_clears_published_at(client: httpx.AsyncClient, member: Account) -> None:
    post = await create(client, member, status="published")
    assert post["published_at"] is not None
    response = await client.patch(f"{URL}/{post['id']}", json={"status": "draft"}, headers=member.headers)
    assert response.json()["data"]["published_at"] is None


async def test_empty_patch_changes_nothing(client: httpx.AsyncClient, member: Account) -> None:
    post = await create(client, member, tags=["a"])
    response = await client.patch(f"{URL}/{post['id']}", json={}, headers=member.headers)
    assert response.status_code == 200
    assert response.json()["data"] == post


@pytest.mark.parametrize("field", ["title", "body", "tags", "status"])
async def test_patch_with_null_is_422(client: httpx.AsyncClient, member: Account, field: str) -> None:
    post = await create(client, member)
    response = await client.patch(f"{URL}/{post['id']}", json={field: None}, headers=member.headers)
    assert response.status_code == 422
    assert f"body.{field}" in response.json()["error"]["message"]


async def test_write_actions_are_audited(app: FastAPI, client: httpx.AsyncClient, member: Account) -> None:
    admin = await make_account(app, "admin")
    post = await create(client, member)
    await client.patch(f"{URL}/{post['id']}", json={"title": "x"}, headers=member.headers)
    await client.delete(f"{URL}/{post['id']}", headers=member.headers)
    await app.state.audit_writer.flush()
    for action in ("post.create", "post.update", "post.delete"):
        response = await client.get("/api/v1/audit", params={"action": action}, headers=admin.headers)
        rows = response.json()["data"]["items"]
        assert [(r["target"], r["actor"]) for r in rows] == [(str(post["id"]), f"user:{member.id}")]


# -- listing -----------------------------------------------------------------------------------------------------


async def test_cursor_pages_newest_first_without_overlap(client: httpx.AsyncClient, member: Account) -> None:
    made = [(await create(client, member, title=f"post {n}", status="published"))["id"] for n in range(25)]
    seen: list[int] = []
    pages = 0
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 10, **({"cursor": cursor} if cursor else {})}
        page = await listing(client, member, **params)
        seen += ids(page)
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == sorted(made, reverse=True)
    assert len(set(seen)) == 25


async def test_default_limit_is_20_and_limit_is_bounded(client: httpx.AsyncClient, member: Account) -> None:
    for n in range(21):
        await create(client, member, title=f"p{n}")
    page = await listing(client, member)
    assert len(page["items"]) == 20
    assert page["next_cursor"]
    for bad in (0, 101, -1, "many"):
        response = await client.get(URL, params={"limit": bad}, headers=member.headers)
        assert response.status_code == 422
        assert "query.limit" in response.json()["error"]["message"]


async def test_filters_by_author_tag_and_status(
    client: httpx.AsyncClient, member: Account, other: Account
) -> None:
    a1 = await create(client, member, tags=["python", "web"], status="published")
    a2 = await create(client, member, tags=["python"])
    a3 = await create(client, member, tags=["rust"], status="published")
    b1 = await create(client, other, tags=["python"], status="published")

    assert ids(await listing(client, member, author=member.id)) == [a3["id"], a2["id"], a1["id"]]
    assert ids(await listing(client, member, author=other.id)) == [b1["id"]]
    assert ids(await listing(client, member, author="nobody")) == []
    assert ids(await listing(client, member, tag="python")) == [b1["id"], a2["id"], a1["id"]]
    assert ids(await listing(client, member, tag="  PYTHON ")) == [b1["id"], a2["id"], a1["id"]]
    assert ids(await listing(client, member, tag="web")) == [a1["id"]]
    assert ids(await listing(client, member, tag="pyth")) == []
    assert ids(await listing(client, member, status="draft")) == [a2["id"]]
    assert ids(await listing(client, member, status="published")) == [b1["id"], a3["id"], a1["id"]]
    combined = await listing(client, member, author=member.id, tag="python", status="published")
    assert ids(combined) == [a1["id"]]
    assert (await client.get(URL, params={"status": "archived"}, headers=member.headers)).status_code == 422


async def test_search_finds_words_in_title_and_body_and_nothing_else(
    client: httpx.AsyncClient, member: Account
) -> None:
    titled = await create(client, member, title="Zebra crossings of Nairobi", status="published")
    bodied = await create(client, member, body="The quokka smiles. A zebra? No.", status="published")
    tagged = await create(client, member, title="plain", tags=["pangolin"], status="published")
    await create(client, member, title="Unrelated", body="nothing to see", status="published")

    assert ids(await listing(client, member, q="zebra")) == [bodied["id"], titled["id"]]
    assert ids(await listing(client, member, q="ZEBRA")) == [bodied["id"], titled["id"]]
    assert ids(await listing(client, member, q="quokka")) == [bodied["id"]]
    assert ids(await listing(client, member, q="nairobi zebra")) == [titled["id"]]
    assert ids(await listing(client, member, q="quokka nairobi")) == []
    assert ids(await listing(client, member, q="zeb")) == []  # whole words, no prefixes
    assert ids(await listing(client, member, q="pangolin")) == []  # tags are not searched
    assert ids(await listing(client, member, q=member.email)) == []
    assert ids(await listing(client, member, q="zebra*")) == [bodied["id"], titled["id"]]
    assert ids(await listing(client, member, q="zebra", tag="pangolin")) == []
    assert tagged["id"] not in ids(await listing(client, member, q="plain pangolin"))
    assert len(ids(await listing(client, member, q=""))) == 4  # an empty search is no search

    renamed = await client.patch(f"{URL}/{titled['id']}", json={"title": "Okapi"}, headers=member.headers)
    assert renamed.status_code == 200
    assert ids(await listing(client, member, q="zebra")) == [bodied["id"]]
    assert ids(await listing(client, member, q="okapi")) == [titled["id"]]
    await client.delete(f"{URL}/{bodied['id']}", headers=member.headers)
    assert ids(await listing(client, member, q="quokka")) == []


async def test_search_pages_with_the_cursor(client: httpx.AsyncClient, member: Account) -> None:
    made = [(await create(client, member, body=f"walrus {n}"))["id"] for n in range(5)]
    first = await listing(client, member, q="walrus", limit=3)
    second = await listing(client, member, q="walrus", limit=3, cursor=first["next_cursor"])
    assert ids(first) + ids(second) == sorted(made, reverse=True)
    assert second["next_cursor"] is None


# -- visibility and ownership -------------------------------------------------------------------------------------


async def test_drafts_are_visible_only_to_their_author_and_admins(
    app: FastAPI, client: httpx.AsyncClient, member: Account, other: Account
) -> None:
    admin = await make_account(app, "admin")
    draft = await create(client, member, title="Secret armadillo plan", tags=["plans"])
    public = await create(client, member, title="Public armadillo news", status="published", tags=["plans"])

    for params in ({}, {"status": "draft"}, {"author": member.id}, {"tag": "plans"}, {"q": "armadillo"}):
        assert draft["id"] not in ids(await listing(client, other, **params)), params
        assert draft["id"] in ids(await listing(client, member, **params)), params
        assert draft["id"] in ids(await listing(client, admin, **params)), params
    assert ids(await listing(client, other, status="draft")) == []
    assert ids(await listing(client, other, q="secret")) == []
    assert ids(await listing(client, other)) == [public["id"]]

    hidden = await client.get(f"{URL}/{draft['id']}", headers=other.headers)
    absent = await client.get(f"{URL}/999999", headers=other.headers)
    assert hidden.status_code == absent.status_code == 404
    assert hidden.json()["error"]["message"] == absent.json()["error"]["message"]
    assert (await client.get(f"{URL}/{draft['id']}", headers=member.headers)).status_code == 200
    assert (await client.get(f"{URL}/{draft['id']}", headers=admin.headers)).status_code == 200
    assert (await client.get(f"{URL}/{public['id']}", headers=other.headers)).status_code == 200


async def test_member_cannot_change_or_delete_anothers_post(
    app: FastAPI, client: httpx.AsyncClient, member: Account, other: Account
) -> None:
    public = await create(client, member, title="Mine", body="original", tags=["keep"], status="published")
    draft = await create(client, member, title="My draft", body="original")
    before = {p["id"]: p for p in (await listing(client, member))["items"]}

    for attempt in (
        client.patch(f"{URL}/{public['id']}", json={"title": "pwned"}, headers=other.headers),
        client.patch(f"{URL}/{public['id']}", json={"status": "draft"}, headers=other.headers),
        client.patch(f"{URL}/{public['id']}", json={"tags": ["spam"]}, headers=other.headers),
        client.delete(f"{URL}/{public['id']}", headers=other.headers),
    ):
        response = await attempt
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "G2_forbidden"
    for attempt in (
        client.patch(f"{URL}/{draft['id']}", json={"title": "pwned"}, headers=other.headers),
        client.delete(f"{URL}/{draft['id']}", headers=other.headers),
    ):
        response = await attempt
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "E2_not_found"

    after = {p["id"]: p for p in (await listing(client, member))["items"]}
    assert after == before
    assert await count_rows(app, Post) == 2


async def test_admin_can_change_and_delete_any_post(
    app: FastAPI, client: httpx.AsyncClient, member: Account
) -> None:
    admin = await make_account(app, "admin")
    draft = await create(client, member, title="Draft")
    response = await client.patch(
        f"{URL}/{draft['id']}", json={"title": "Moderated", "tags": ["checked"]}, headers=admin.headers
    )
    assert response.status_code == 200
    moderated = response.json()["data"]
    assert moderated["title"] == "Moderated"
    assert moderated["author_id"] == member.id  # moderating does not take the post over
    assert (await client.delete(f"{URL}/{draft['id']}", headers=admin.headers)).status_code == 200
    assert (await client.get(f"{URL}/{draft['id']}", headers=member.headers)).status_code == 404
    assert await count_rows(app, PostTag) == 0


async def test_admin_key_without_admin_scope_does_not_moderate(
    app: FastAPI, client: httpx.AsyncClient, member: Account
) -> None:
    admin = await make_account(app, "admin")
    _, secret = await app.state.identity.create_key(admin.id, "writer", ["read", "write"])
    headers = {"Authorization": f"Bearer {secret}"}
    draft = await create(client, member)
    assert (await client.get(f"{URL}/{draft['id']}", headers=headers)).status_code == 404
    assert (await client.delete(f"{URL}/{draft['id']}", headers=headers)).status_code == 404


async def test_deleting_an_author_removes_their_posts_from_lists_and_search(
    app: FastAPI, client: httpx.AsyncClient, member: Account, other: Account
) -> None:
    await create(client, other, title="ocelot", tags=["cats"], status="published")
    kept = await create(client, member, title="ocelot too", status="published")
    await app.state.identity.delete_user(other.id)
    assert ids(await listing(client, member, q="ocelot")) == [kept["id"]]
    assert await count_rows(app, Post) == 1
    assert await count_rows(app, PostTag) == 0


# -- authentication and scopes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", URL), ("POST", URL), ("GET", f"{URL}/1"), ("PATCH", f"{URL}/1"), ("DELETE", f"{URL}/1")],
)
async def test_unauthenticated_is_401(client: httpx.AsyncClient, method: str, path: str) -> None:
    response = await client.request(
        method, path, json={"title": "x"} if method in ("POST", "PATCH") else None
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "G0_auth_not_configured"


async def test_read_only_key_cannot_write(app: FastAPI, client: httpx.AsyncClient, member: Account) -> None:
    post = await create(client, member, status="published")
    _, secret = await app.state.identity.create_key(member.id, "reader", ["read"])
    headers = {"X-API-Key": secret}
    refused = [
        await client.post(URL, json={"title": "x"}, headers=headers),
        await client.patch(f"{URL}/{post['id']}", json={"title": "x"}, headers=headers),
        await client.delete(f"{URL}/{post['id']}", headers=headers),
    ]
    for response in refused:
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "G2_scope_missing"
    assert ids((await client.get(URL, headers=headers)).json()["data"]) == [post["id"]]
    assert await count_rows(app, Post) == 1


# -- hostile and oversized input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("hostile", HOSTILE)
async def test_hostile_filters_never_error_or_leak(
    app: FastAPI, client: httpx.AsyncClient, member: Account, other: Account, hostile: str
) -> None:
    secret = await create(client, other, title="hidden draft", body="zebra", tags=["zebra"])
    public = await create(client, other, title="public zebra", tags=["zebra"], status="published")
    users = await count_rows(app, User)
    for name in ("author", "tag", "status", "q", "cursor"):
        for value in (hostile, f"zebra {hostile}", f"{hostile} zebra"):
            response = await client.get(URL, params={name: value}, headers=member.headers)
            assert response.status_code in (200, 422), (name, value, response.text)
            body = response.json()
            if response.status_code == 200:
                found = ids(body["data"])
                assert secret["id"] not in found
                assert set(found) <= {public["id"]}, (name, value)
            else:
                assert body["error"]["code"] == "E1_validation_error"
                assert body["error"]["details"][0]["field"] == f"query.{name}"
            text = response.text.lower()
            assert "password" not in text
            assert "traceback" not in text
            assert "syntax" not in text
    page = await client.get(f"{URL}/{hostile}", headers=member.headers)
    assert page.status_code in (404, 422)
    assert await count_rows(app, Post) == 2
    assert await count_rows(app, PostTag) == 2
    assert await count_rows(app, User) == users


@pytest.mark.parametrize("hostile", HOSTILE)
async def test_hostile_text_is_stored_verbatim(
    client: httpx.AsyncClient, member: Account, hostile: str
) -> None:
    post = await create(client, member, title=hostile, body=f"{hostile} body {hostile}")
    fetched = (await client.get(f"{URL}/{post['id']}", headers=member.headers)).json()["data"]
    assert fetched["title"] == hostile.strip()
    assert fetched["body"] == f"{hostile} body {hostile}"
    assert ids(await listing(client, member, q=f"{hostile} body")) == [post["id"]]


async def test_search_with_only_punctuation_finds_nothing(client: httpx.AsyncClient, member: Account) -> None:
    await create(client, member, title="*** NEAR( \" ' % _")
    for q in ("*", '"', "'", "%", "_", "-", "()", '""'):
        assert ids(await listing(client, member, q=q)) == [], q


async def test_out_of_range_ids_and_cursors_are_422_not_500(
    client: httpx.AsyncClient, member: Account
) -> None:
    import base64

    huge = str(2**70)
    for path in (f"{URL}/{huge}", f"{URL}/0", f"{URL}/-1", f"{URL}/abc"):
        response = await client.get(path, headers=member.headers)
        assert response.status_code == 422, path
    for raw in (huge, "0", "-5", "abc", "1.5"):
        cursor = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
        response = await client.get(URL, params={"cursor": cursor}, headers=member.headers)
        assert response.status_code == 422, raw
        assert response.json()["error"]["details"][0]["field"] == "query.cursor"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"title": "x" * 301}, "body.title"),
        ({"title": ""}, "body.title"),
        ({"title": "   "}, "body.title"),
        ({"body": "x"}, "body.title"),
        ({"title": "t", "body": "x" * 100_001}, "body.body"),
        ({"title": "t", "tags": [f"t{n}" for n in range(21)]}, "body.tags"),
        ({"title": "t", "tags": ["x" * 51]}, "body.tags.0"),
        ({"title": "t", "tags": ["ok", "no;semicolons"]}, "body.tags.1"),
        ({"title": "t", "tags": ["' OR 1=1 --"]}, "body.tags.0"),
        ({"title": "t", "tags": ["%"]}, "body.tags.0"),
        ({"title": "t", "tags": [""]}, "body.tags.0"),
        ({"title": "t", "tags": "python"}, "body.tags"),
        ({"title": "t", "status": "archived"}, "body.status"),
        ({"title": "t\x00"}, "body.title"),
        ({"title": "t", "body": "a\x00b"}, "body.body"),
        ({"title": "t", "author_id": "someone-else"}, "body.author_id"),
        ({"title": "t", "id": 1}, "body.id"),
    ],
)
async def test_invalid_posts_are_422_naming_the_field(
    app: FastAPI, client: httpx.AsyncClient, member: Account, payload: dict[str, Any], field: str
) -> None:
    response = await client.post(URL, json=payload, headers=member.headers)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "E1_validation_error"
    assert field in error["message"]
    assert await count_rows(app, Post) == 0


async def test_invalid_changes_are_422_and_change_nothing(client: httpx.AsyncClient, member: Account) -> None:
    post = await create(client, member, tags=["a"])
    for payload, field in (
        ({"title": "x" * 301}, "body.title"),
        ({"body": "x" * 100_001}, "body.body"),
        ({"tags": ["t"] * 21}, "body.tags"),
        ({"author_id": "x"}, "body.author_id"),
    ):
        response = await client.patch(f"{URL}/{post['id']}", json=payload, headers=member.headers)
        assert response.status_code == 422
        assert field in response.json()["error"]["message"]
    assert (await client.get(f"{URL}/{post['id']}", headers=member.headers)).json()["data"] == post


async def test_largest_allowed_post_is_accepted(client: httpx.AsyncClient, member: Account) -> None:
    post = await create(
        client,
        member,
        title="t" * 300,
        body="word " * 20_000,
        tags=[f"tag-{n:02}" + "x" * 44 for n in range(20)],
    )
    assert len(post["title"]) == 300
    assert len(post["body"]) == 100_000
    assert len(post["tags"]) == 20
    assert ids(await listing(client, member, q="word")) == [post["id"]]
