"""What every request passes before a route sees it: the bearer token, the body size limit and the body timeout.

:class:`Guard` is plain ASGI middleware, so it refuses a request from its headers alone: a missing or wrong token
(401) or a ``Content-Length`` above the limit (413) is answered before one byte of the body is read. A chunked
body is counted as it arrives and refused once it passes the limit; a client that stops sending its body for
``body_timeout`` seconds is answered 408. Every refusal is a JSON error (see :func:`error_body`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Every error code the server answers with (besides the engine's problem codes in 422 responses).
SERVER_CODES: dict[str, tuple[int, str]] = {
    "unauthorized": (401, "no `Authorization: Bearer <token>` header, or the wrong token"),
    "not_found": (404, "no such job, file or route"),
    "method_not_allowed": (405, "the route exists but not with this HTTP method"),
    "body_timeout": (408, "the client stopped sending its request body"),
    "not_cancellable": (409, "the job already ended (finished, failed or cancelled)"),
    "body_too_large": (413, "the request body is larger than `--max-body`"),
    "bad_header": (400, "a request header is malformed (`where` names it)"),
    "bad_json": (400, "the request body is not valid JSON (`line` and `column` say where)"),
    "bad_request": (422, "the request is JSON but not of the expected shape (`where` names the field)"),
    "storage_full": (507, "the state folder cannot be written (disk full, quota, file size limit): not accepted"),
    "internal_error": (500, "an unexpected error in the server; the job queue is unaffected"),
}


def error_body(code: str, message: str, **where: Any) -> dict[str, Any]:
    """The JSON of a refusal: ``{"error": {"code", "message", ...where}}`` (``where``: header, field, line...)."""
    return {"error": {"code": code, "message": message, **where}}


class ApiError(HTTPException):
    """A refusal with one of :data:`SERVER_CODES` and where it lies; rendered as :func:`error_body`."""

    def __init__(self, code: str, message: str, headers: dict[str, str] | None = None, **where: Any) -> None:
        super().__init__(SERVER_CODES[code][0], message, headers)
        self.code = code
        self.where = where

    def body(self) -> dict[str, Any]:
        """The response JSON."""
        return error_body(self.code, str(self.detail), **self.where)


async def send_json(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    """Answer with a JSON body and close the connection (used before the app has read the request)."""
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
           (b"connection", b"close")]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


def token_matches(headers: list[tuple[bytes, bytes]], token: str) -> bool:
    """Whether the request carries ``Authorization: Bearer <token>`` (compared in constant time)."""
    given = b""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, rest = value.partition(b" ")
            if scheme.lower() == b"bearer":
                given = rest.strip()
    return bool(given) and hmac.compare_digest(given, token.encode())


class Guard:
    """ASGI middleware: bearer token on ``/api/*``, a body size limit and a body timeout on every request."""

    def __init__(self, app: ASGIApp, token: str, max_body: int, body_timeout: float) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if (path == "/api" or path.startswith("/api/")) and not token_matches(scope["headers"], self.token):
            await send_json(send, 401, error_body("unauthorized", "send the token as `Authorization: Bearer <token>`",
                                                  where="header Authorization"),
                            {"WWW-Authenticate": 'Bearer realm="reelgraph"'})
            return
        headers = {k.lower(): v for k, v in scope["headers"]}
        length_text = headers.get(b"content-length")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if length_text is not None:
            if not length_text.isdigit():
                await send_json(send, 400, error_body("bad_header", "Content-Length is not a number",
                                                      where="header Content-Length"))
                return
            if int(length_text) > self.max_body:
                await send_json(send, 413, error_body(
                    "body_too_large", f"the body ({int(length_text)} bytes) is larger than the limit "
                    f"({self.max_body} bytes); nothing was read", where="header Content-Length",
                    limit=self.max_body))
                return
        expects_body = chunked or (length_text is not None and int(length_text) > 0)
        await self.app(scope, self._limited(receive, expects_body), send)

    def _limited(self, receive: Receive, expects_body: bool) -> Receive:
        seen = 0
        done = not expects_body

        async def limited() -> Message:
            nonlocal seen, done
            if done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout)
            except asyncio.TimeoutError:
                raise ApiError("body_timeout", f"no part of the request body arrived for {self.body_timeout:g}s",
                               where="body") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise ApiError("body_too_large", f"the body is larger than the limit ({self.max_body} bytes); "
                                   "reading stopped there", where="body", limit=self.max_body)
                done = not message.get("more_body", False)
            else:
                done = True
            return message

        return limited
