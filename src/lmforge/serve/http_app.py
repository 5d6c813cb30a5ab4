"""What every lmforge HTTP server shares (`lmforge api` for generative models and for classifiers): the FastAPI app
with OpenAI's error bodies for every failure, the request size limit, the API key check, internal errors logged with a
request id and answered without their detail."""

from __future__ import annotations

import json
import logging
import secrets
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from lmforge.config.serving import ServeArguments, is_loopback
from lmforge.errors import ConfigError
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


class LoopbackNames:
    """ASGI middleware of a server listening on loopback: a request whose Host header, or whose Origin header, names
    anything but this machine (or one of `allowed`) gets 403. Without it a web page the user opens could point its
    own host name at 127.0.0.1 (DNS rebinding) and drive the server as a same-origin page."""

    def __init__(self, app: Any, allowed: Iterable[str] = ()) -> None:
        self.app, self.allowed = app, {name.lower() for name in allowed}

    def accepts(self, name: str | None) -> bool:
        return name is not None and (is_loopback(name) or name == "0.0.0.0" or name.lower() in self.allowed)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        origin = headers.get(b"origin")
        refused = (f"Host {host!r}" if not self.accepts(_hostname(host)) else
                   f"Origin {origin.decode('latin-1')!r}" if origin is not None
                   and not self.accepts(_hostname(origin.decode("latin-1"), url=True)) else None)
        if refused is None:
            return await self.app(scope, receive, send)
        logger.warning("refused a request naming %s: this server answers loopback names only (allowed_hosts)",
                       refused)
        if scope["type"] == "websocket":
            await receive()
            return await send({"type": "websocket.close", "code": 1008})
        body = json.dumps(error_body(f"{refused} is not this server's: it answers loopback names only (add the "
                                     f"name to allowed_hosts).", "permission_error", code="host_not_allowed")).encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _hostname(value: str, url: bool = False) -> str | None:
    """The host name of a Host header (`name:port`, `[::1]:port`) or of an Origin (`scheme://name:port`)."""
    try:
        return urlsplit(value if url else f"//{value}").hostname
    except ValueError:
        return None


def base_app(model_name: str, api_key: str | None, max_request_bytes: int,
             loopback_names: Iterable[str] | None = None) -> tuple[FastAPI, Any]:
    """The FastAPI app every lmforge server starts from: OpenAI's error bodies for every failure, the request size
    limit, schema pages off behind an API key; and the dependency that checks the key. `loopback_names` (a server on
    loopback): only requests naming this machine, or one of these names, are answered."""
    # with an API key, the schema pages would tell anyone what the server is: they are off
    docs = {} if api_key is None else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="lmforge", description=f"OpenAI-compatible API serving {model_name}", **docs)
    app.add_middleware(BodyLimit, limit=max_request_bytes)
    if loopback_names is not None:
        app.add_middleware(LoopbackNames, allowed=loopback_names)

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


def answered_names(serve: ServeArguments, api_key: str | None) -> list[str] | None:
    """The host names a server on loopback answers besides this machine's (None: one listening for other machines,
    which answers any name). A server other machines reach without an API key is a config error, unless the config
    says `allow_unauthenticated: true`."""
    if is_loopback(serve.host):
        return list(serve.allowed_hosts)
    if api_key is None:
        if not serve.allow_unauthenticated:
            raise ConfigError(f"Config error: `host: {serve.host}` serves other machines, and there is no API key: "
                              f"anyone who reaches the port could use the model. Set `api_key` (or $LMFORGE_API_KEY), "
                              f"keep `host: 127.0.0.1`, or set `allow_unauthenticated: true` to serve it openly.")
        logger.warning("Serving %s without an API key (allow_unauthenticated): anyone who reaches the port can use "
                       "the model.", serve.host)
    return None


def internal_error(detail: str, err: BaseException | None = None) -> str:
    """The message of a 500: a request id for the client; the detail (and the traceback of `err`) only in the
    server's log, where the id finds it."""
    request_id = uuid.uuid4().hex[:12]
    logger.error("internal error (request id %s): %s", request_id, detail, exc_info=err)
    return f"Internal error (request id {request_id}); the server log has the details."
