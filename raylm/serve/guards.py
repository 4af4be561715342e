"""What a request must pass before the model sees it: the API key, the content type, the body's size and time.

    key = load_api_key(settings)                   # at replica start: a file, or the replica's own env
    authorize(request, key)                        # 401 unless `Authorization: Bearer KEY` (scheme any case)
    require_json(request)                          # 415 unless Content-Type: application/json
    raw = await read_body(request, limit, timeout) # 413 past `limit` bytes, 408 past `timeout` seconds

All of them run before a byte of the body is parsed, so a hostile client costs the
replica a header check, not a tokenizer run; `page_headers` are the security
headers of the chat page (a strict CSP with hashes of its inline script and style).

The key: from `serve.api_key_file` (a Kubernetes Secret mounted as a file, or the
private file `raylm serve` writes for a local Ray), else from the replica process's
own env var `serve.api_key_env` (a Secret as an env var in the pod), never from
Ray's runtime env, which Ray's dashboard shows. A key that is configured but empty
or unreadable stops the replica instead of opening the API; with
`serve.require_api_key` (the cluster preset) so does a missing one.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import re
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from raylm.config import ServeConfig
from raylm.serve.protocol import APIError

INTERNAL = APIError(500, "internal server error (details are in the server log)", type="server_error")


class MissingKeyError(RuntimeError):
    """The replica cannot know its API key: it must not start (an open API is worse than none)."""


def load_api_key(settings: ServeConfig) -> str | None:
    """The bearer token clients must send, or None for an open API (only when no key is configured at all)."""
    if settings.api_key_file:
        try:
            key = Path(settings.api_key_file).read_text().strip()
        except OSError as err:
            raise MissingKeyError(f"serve.api_key_file {settings.api_key_file} cannot be read "
                                  f"({err.strerror}): refusing to serve without the key") from None
        source = f"serve.api_key_file {settings.api_key_file}"
    elif settings.api_key_env in os.environ:
        key, source = os.environ[settings.api_key_env].strip(), f"${settings.api_key_env}"
    elif settings.require_api_key:
        raise MissingKeyError(f"serve.require_api_key is set but neither serve.api_key_file nor "
                              f"${settings.api_key_env} holds a key on this node: refusing to serve an open API")
    else:
        return None
    if not key:
        raise MissingKeyError(f"{source} is empty: refusing to serve an open API (unset it for no key)")
    return key


def bearer_token(header: str) -> str:
    """`Bearer KEY` -> KEY; the scheme is case-insensitive (RFC 7235)."""
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def authorize(request: Request, key: str | None) -> None:
    if key is None:
        return
    given = bearer_token(request.headers.get("authorization", ""))
    # bytes compared in constant time; a header with non-latin-1 bytes arrives as surrogate escapes: never equal
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), key.encode()):
        raise APIError(401, "Incorrect API key provided. Send it as 'Authorization: Bearer KEY'.",
                       code="invalid_api_key")


def require_json(request: Request) -> None:
    """Only JSON bodies: a cross-site form (text/plain, urlencoded, multipart) cannot start a generation."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise APIError(415, f"Content-Type must be application/json (got '{media or 'none'}')",
                       param="Content-Type", code="unsupported_media_type")


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, read as it arrives: refused as soon as it passes `limit` bytes or `timeout_s` seconds."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise APIError(400, "Content-Length is not a number", param="Content-Length")
        if int(declared) > limit:
            raise _too_large(int(declared), limit)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(size, limit)
                chunks.append(chunk)
    except TimeoutError:
        raise APIError(408, f"the request body did not arrive within {timeout_s:g} s", code="request_timeout") from None
    except ClientDisconnect:
        raise APIError(400, "the client disconnected while sending the body", code="client_disconnected") from None
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> APIError:
    return APIError(413, f"the request body is {size} bytes or more; this server takes at most {limit} "
                         f"(serve.max_body_mb)", code="request_too_large")


def _inline_hashes(page: str, tag: str) -> str:
    bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in bodies)


def page_headers(page: str) -> dict[str, str]:
    """Security headers for the chat page: only its own inline script and style run, it talks only to this
    origin, no other site may frame it, and the browser never sniffs another content type."""
    csp = (f"default-src 'none'; script-src {_inline_hashes(page, 'script')}; "
           f"style-src {_inline_hashes(page, 'style')}; connect-src 'self'; img-src 'self' data:; "
           f"base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


def install_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape: APIError as raised, Starlette's own 404/405 (unknown route, wrong
    method), and anything unexpected as a 500 whose traceback stays in the replica's log. (Module-level
    handlers: Serve pickles the app, and these travel by reference.)"""
    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)


async def api_error(request: Request, err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


async def http_error(request: Request, err: HTTPException) -> JSONResponse:
    return JSONResponse(APIError(err.status_code, str(err.detail)).body(), status_code=err.status_code)


async def internal_error(request: Request, err: Exception) -> JSONResponse:
    logging.getLogger("ray.serve").exception("request %s %s failed", request.method, request.url.path)
    return JSONResponse(INTERNAL.body(), status_code=500)
