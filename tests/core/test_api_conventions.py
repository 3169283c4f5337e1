"""The API conventions every route inherits: envelope, request ids, error shapes, body limits."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel


class Item(BaseModel):
    name: str
    count: int


def add_probe_routes(app: FastAPI) -> None:
    async def boom() -> None:
        raise RuntimeError("secret detail that must not leak: postgres://u:pw@db")

    async def echo(item: Item) -> dict[str, object]:
        return {"name": item.name, "count": item.count}

    app.add_api_route("/api/v1/test-boom", boom, methods=["GET"])
    app.add_api_route("/api/v1/test-echo", echo, methods=["POST"])


def assert_error_envelope(body: dict[str, object], code: str) -> dict[str, object]:
    assert body["success"] is False
    assert body["data"] is None
    error = body["error"]
    assert isinstance(error, dict)
    assert error["code"] == code
    assert error["status"] == "BLOCKED"
    assert code in error["reason_codes"]
    metadata = body["metadata"]
    assert isinstance(metadata, dict)
    assert metadata["request_id"] == error["trace_id"]
    return error


async def test_success_envelope_carries_request_id_and_timestamp(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/status")
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    assert body["error"] is None
    assert body["metadata"]["request_id"] == response.headers["x-request-id"]
    assert body["metadata"]["timestamp"].endswith("Z")


async def test_client_request_id_is_propagated(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": "trace-abc.123"})
    assert response.headers["x-request-id"] == "trace-abc.123"


async def test_unsafe_client_request_id_is_replaced(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": "bad id\nwith newline" * 20})
    rid = response.headers["x-request-id"]
    assert rid != "bad id\nwith newline" * 20
    assert len(rid) == 32


async def test_unknown_route_is_404_envelope(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/nope")
    assert response.status_code == 404
    assert_error_envelope(response.json(), "E2_not_found")
    assert response.headers["x-request-id"]


async def test_wrong_method_is_405_envelope(client: httpx.AsyncClient) -> None:
    response = await client.delete("/api/v1/status")
    assert response.status_code == 405
    assert_error_envelope(response.json(), "E2_method_not_allowed")


async def test_unhandled_error_fails_closed_without_details(app: FastAPI, client: httpx.AsyncClient) -> None:
    add_probe_routes(app)
    response = await client.get("/api/v1/test-boom")
    assert response.status_code == 500
    error = assert_error_envelope(response.json(), "E5_internal_error")
    assert "secret" not in response.text
    assert "Traceback" not in response.text
    assert error["trace_id"] == response.headers["x-request-id"]


async def test_validation_error_names_the_field(app: FastAPI, client: httpx.AsyncClient) -> None:
    add_probe_routes(app)
    response = await client.post("/api/v1/test-echo", json={"name": "x", "count": "many"})
    assert response.status_code == 422
    error = assert_error_envelope(response.json(), "E1_validation_error")
    assert "body.count" in str(error["message"])
    assert error["details"][0]["field"] == "body.count"  # type: ignore[index]


async def test_missing_field_is_named(app: FastAPI, client: httpx.AsyncClient) -> None:
    add_probe_routes(app)
    response = await client.post("/api/v1/test-echo", json={"name": "x"})
    assert response.status_code == 422
    assert "body.count" in response.json()["error"]["message"]


async def test_malformed_json_is_422_with_its_own_code(app: FastAPI, client: httpx.AsyncClient) -> None:
    add_probe_routes(app)
    response = await client.post(
        "/api/v1/test-echo", content=b'{"name": "x", "count": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert_error_envelope(response.json(), "E1_malformed_json")


async def test_oversized_body_by_content_length_is_413(app: FastAPI, client: httpx.AsyncClient) -> None:
    add_probe_routes(app)
    limit = app.state.runtime.settings.max_body_bytes
    response = await client.post(
        "/api/v1/test-echo", content=b"x" * (limit + 1), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert_error_envelope(response.json(), "E1_payload_too_large")


async def test_oversized_chunked_body_is_413(app: FastAPI, client: httpx.AsyncClient) -> None:
    add_probe_routes(app)
    limit = app.state.runtime.settings.max_body_bytes

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536

    response = await client.post(
        "/api/v1/test-echo", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert_error_envelope(response.json(), "E1_payload_too_large")


async def test_openapi_is_served(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert "/api/v1/status" in schema["paths"]
    assert (await client.get("/docs")).status_code == 200


@pytest.mark.parametrize("origin_allowed", [True, False])
async def test_cors_is_configurable(tmp_path, origin_allowed: bool) -> None:  # type: ignore[no-untyped-def]
    from asgi_lifespan import LifespanManager

    from aiguardian.app import create_app
    from tests.conftest import make_settings

    origins = ["https://app.example"] if origin_allowed else []
    application = create_app(make_settings(tmp_path, "sqlite", None, cors_origins=origins))
    async with LifespanManager(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.get("/healthz", headers={"Origin": "https://app.example"})
    assert ("access-control-allow-origin" in response.headers) is origin_allowed
