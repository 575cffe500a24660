"""The OpenAPI document of agentsync's HTTP API, served at /openapi.json."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse


def openapi_schema() -> dict[str, Any]:
    return {"openapi": "3.1.0", "info": {"title": "agentsync", "version": "0.1.0"}, "paths": {}}


async def openapi_endpoint(request: Request) -> JSONResponse:
    return JSONResponse(openapi_schema())
