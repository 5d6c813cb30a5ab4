"""What every lmforge HTTP server shares (`lmforge api` for generative models and for classifiers): the FastAPI app
with OpenAI's error bodies for every failure, the request size limit, the API key check, internal errors logged with a
request id and answered without their detail."""

from __future__ import annotations

import json
import logging
import secrets
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from lmforge.serve.protocol import error_body

logger = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.body = status, error_body(message, type_, param, code)


def _validation_message(err: RequestValidationError) -> tuple[str, str | None]:
    errors = err.errors()
    # a union (content: text or parts) reports every member's failure: a validator's own message says most
    first = next((e for e in errors if e.get("type") == "value_error"), errors[0])
    if first.get("type") == "json_invalid":
        return f"The request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}.", None
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    message = first["msg"].removeprefix("Value error, ")
    if param is None and first.get("type") == "missing":
        message = "The request body is missing: send a JSON object."
    return (f"Invalid '{param}': {message}." if param else message), param


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before it is read whole (Content-Length, or
    counted as a chunked body arrives)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_large(send)
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:  # FastAPI turns other errors while reading a body into a 400
                raise HTTPException(413, self.message)
            return message

        await self.app(scope, counted, send)

    @property
    def message(self) -> str:
        return f"The request body is larger than {self.limit} bytes (max_request_bytes)."

    async def _too_large(self, send: Any) -> None:
        body = json.dumps(error_body(self.message, code="request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def base_app(model_name: str, api_key: str | None, max_request_bytes: int) -> tuple[FastAPI, Any]:
    """The FastAPI app every lmforge server starts from: OpenAI's error bodies for every failure, the request size
    limit, schema pages off behind an API key; and the dependency that checks the key."""
    # with an API key, the schema pages would tell anyone what the server is: they are off
    docs = {} if api_key is None else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="lmforge", description=f"OpenAI-compatible API serving {model_name}", **docs)
    app.add_middleware(BodyLimit, limit=max_request_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(err.body, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(err)
        return JSONResponse(error_body(message, param=param), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, err: HTTPException) -> JSONResponse:
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(err.detail), kind), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def _crash(request: Request, err: Exception) -> JSONResponse:
        message = internal_error(f"{request.method} {request.url.path}: {err!r}", err)
        return JSONResponse(error_body(message, "server_error"), status_code=500)

    async def authorised(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "Invalid or missing API key: send `Authorization: Bearer KEY`.",
                           code="invalid_api_key")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app, authorised


def internal_error(detail: str, err: BaseException | None = None) -> str:
    """The message of a 500: a request id for the client; the detail (and the traceback of `err`) only in the
    server's log, where the id finds it."""
    request_id = uuid.uuid4().hex[:12]
    logger.error("internal error (request id %s): %s", request_id, detail, exc_info=err)
    return f"Internal error (request id {request_id}); the server log has the details."
