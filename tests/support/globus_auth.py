"""A loopback stand-in for Globus Auth and Globus Groups, for tests that drive the real globus_sdk.

The Globus cloud cannot be reached from the test machine, so `GlobusAuthStandIn` serves the
documented wire contract on 127.0.0.1 (uvicorn in a background thread) and the real
`globus_sdk` clients talk to it. One server answers both services; their paths do not collide:

    https://docs.globus.org/api/auth/reference/
        POST /v2/oauth2/token             authorization_code with PKCE (3.3), client_credentials
                                          (3.6), refresh_token, dependent_token (3.10)
        POST /v2/oauth2/token/introspect  3.9, with `include` and `authentication_policies`
        POST /v2/oauth2/token/revoke      3.11
        GET  /v2/oauth2/authorize         the browser step: `browser_user` signs in, consents
        GET  /v2/web/auth-code            the SDK's default redirect page for native apps
    https://docs.globus.org/api/groups/   GET /v2/groups/my_groups

Point a client at it with `base_url=stand_in.url + "/"`, or put `stand_in.env`
(GLOBUS_SDK_SERVICE_URL_AUTH and GLOBUS_SDK_SERVICE_URL_GROUPS) in the environment of the
process under test. What the stand-in knows, and what it does not model, is described in
tests/support/globus_world.py.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import socket
import threading
import time
import uuid
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.support.globus_world import (
    GROUPS_RESOURCE_SERVER,
    GROUPS_SCOPE,
    GlobusWorld,
    Identity,
    OAuthError,
    ResourceServer,
    commalist,
)
from tests.support.procs import free_port

__all__ = ["GROUPS_RESOURCE_SERVER", "GROUPS_SCOPE", "GlobusAuthStandIn", "Identity", "ResourceServer"]

DEPENDENT_TOKEN_GRANT = "urn:globus:auth:grant_type:dependent_token"
Failure = Literal[None, "5xx", "unreachable"]


def auth_error(status: int, error: str, detail: str) -> JSONResponse:
    """Globus Auth's error document: JSON:API-like `errors` plus the OAuth2 `error` fields."""
    sub_error = {
        "status": str(status),
        "id": str(uuid.uuid4()),
        "code": error.upper(),
        "title": HTTPStatus(status).phrase,
        "detail": detail,
    }
    return JSONResponse({"errors": [sub_error], "error": error, "error_description": detail}, status)


def groups_error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": detail, "detail": detail}, status)


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        client_id, _, secret = base64.b64decode(value).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return ("", "")  # malformed: fails authentication rather than passing as "no header"
    return client_id, secret


async def _form(request: Request) -> dict[str, str]:
    return dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))


class GlobusAuthStandIn(GlobusWorld):
    """Globus Auth + Groups on a loopback port; set up the world with GlobusWorld's methods.

    Thread-safe: tests call it from their thread while uvicorn serves in another. `calls`
    counts requests per operation ("introspect", "dependent_token", "refresh_token",
    "authorization_code", "client_credentials", "my_groups", "revoke", "authorize") before
    `delay_s` and `failure` apply, so the SDK's retries show in it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.browser_user: Identity | None = None
        self.authorize_requests: list[dict[str, str]] = []
        self.calls: collections.Counter[str] = collections.Counter()
        self.delay_s = 0.0
        self._failure: Failure = None
        self._port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._reserved: socket.socket | None = None  # bound but never listening: "unreachable"
        self._app = Starlette(
            routes=[
                Route("/v2/oauth2/token/introspect", self._introspect, methods=["POST"]),
                Route("/v2/oauth2/token/revoke", self._revoke, methods=["POST"]),
                Route("/v2/oauth2/token", self._token, methods=["POST"]),
                Route("/v2/oauth2/authorize", self._authorize, methods=["GET"]),
                Route("/v2/web/auth-code", self._auth_code_page, methods=["GET"]),
                Route("/v2/groups/my_groups", self._my_groups, methods=["GET"]),
            ]
        )

    # ---- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("the Globus stand-in has not been started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def env(self) -> dict[str, str]:
        """Environment pointing globus_sdk (in this or a child process) at the stand-in."""
        return {
            "GLOBUS_SDK_SERVICE_URL_AUTH": self.url + "/",
            "GLOBUS_SDK_SERVICE_URL_GROUPS": self.url + "/",
        }

    def start(self) -> None:
        """Listen, on the port of the previous start if any ("unreachable": only reserve it)."""
        if self._failure == "unreachable":
            self._reserve()
        else:
            self._serve()

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = self._thread = None
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None

    def __enter__(self) -> GlobusAuthStandIn:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset_calls(self) -> None:
        with self._lock:
            self.calls.clear()

    @property
    def failure(self) -> Failure:
        return self._failure

    @failure.setter
    def failure(self, mode: Failure) -> None:
        """ "5xx": every call answers 503. "unreachable": the listening socket is closed and the
        port held without listening, so connections are refused; None serves again."""
        running = self._server is not None or self._reserved is not None
        previous, self._failure = self._failure, mode
        if running and (previous == "unreachable") != (mode == "unreachable"):
            self.stop()
            self.start()

    def _bind(self) -> socket.socket:
        for _ in range(40):
            port = self._port or free_port()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                time.sleep(0.05 if self._port else 0)  # our own port: let the old listener go
                continue
            self._port = port
            return sock
        raise RuntimeError(f"cannot bind 127.0.0.1:{self._port or '<a free port>'}")

    def _reserve(self) -> None:
        if self._reserved is None:
            self._reserved = self._bind()  # bound without listen(): the kernel refuses connections

    def _serve(self) -> None:
        if self._server is not None:
            return
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None
        sock = self._bind()
        config = uvicorn.Config(
            self._app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=1
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                sock.close()
                raise RuntimeError("the Globus stand-in did not start")
            time.sleep(0.005)
        self._server, self._thread = server, thread

    # ---- HTTP ----------------------------------------------------------------------------

    async def _enter(self, operation: str, unavailable: Callable[[], Response]) -> Response | None:
        """Count the call, add the latency, and fail it if asked to."""
        with self._lock:
            self.calls[operation] += 1
            delay, failure = self.delay_s, self._failure
        if delay:
            await asyncio.sleep(delay)
        return unavailable() if failure == "5xx" else None

    async def _auth_call(self, operation: str, answer: Callable[[], Any]) -> Response:
        """An Auth endpoint: count, delay, fail on purpose, or render `answer()` / its OAuthError."""
        failed = await self._enter(
            operation,
            lambda: auth_error(503, "temporarily_unavailable", "the stand-in fails on purpose (5xx)"),
        )
        if failed is not None:
            return failed
        try:
            result = answer()
        except OAuthError as err:
            return auth_error(err.status, err.error, err.detail)
        return result if isinstance(result, Response) else JSONResponse(result)

    async def _introspect(self, request: Request) -> Response:
        form = await _form(request)

        def answer() -> dict[str, Any]:
            client_id = self.authenticate_client(_basic_credentials(request), None, public=False)
            include, policies = commalist(form.get("include")), commalist(form.get("authentication_policies"))
            return self.introspect(client_id, form.get("token", ""), include, policies)

        return await self._auth_call("introspect", answer)

    async def _token(self, request: Request) -> Response:
        form = await _form(request)
        grant_type = form.get("grant_type", "")
        basic = _basic_credentials(request)

        def client(*, public: bool) -> str:
            return self.authenticate_client(basic, form.get("client_id"), public=public)

        answers: dict[str, Callable[[], Any]] = {
            "authorization_code": lambda: self.authorization_code(
                client(public=True),
                form.get("code", ""),
                form.get("redirect_uri", ""),
                form.get("code_verifier", ""),
            ),
            "refresh_token": lambda: self.refresh(client(public=True), form.get("refresh_token", "")),
            "client_credentials": lambda: self.client_credentials(
                client(public=False), form.get("scope", "")
            ),
            DEPENDENT_TOKEN_GRANT: lambda: self.dependent_tokens(
                client(public=False),
                form.get("token", ""),
                form.get("scope"),
                form.get("access_type") == "offline",
            ),
        }

        def unsupported() -> Any:
            raise OAuthError(400, "unsupported_grant_type", f"grant_type {grant_type!r} is not supported")

        operation = "dependent_token" if grant_type == DEPENDENT_TOKEN_GRANT else grant_type or "token"
        return await self._auth_call(operation, answers.get(grant_type, unsupported))

    async def _revoke(self, request: Request) -> Response:
        form = await _form(request)

        def answer() -> dict[str, Any]:
            self.authenticate_client(_basic_credentials(request), form.get("client_id"), public=True)
            self.revoke(form.get("token", ""))
            return {"active": False}

        return await self._auth_call("revoke", answer)

    async def _authorize(self, request: Request) -> Response:
        """The browser: `browser_user` is signed in, consents, and is sent to the redirect_uri."""
        query = dict(request.query_params)
        with self._lock:
            self.authorize_requests.append(query)

        def answer() -> Response:
            user = self.browser_user
            if user is None:
                raise OAuthError(403, "login_required", "nobody is signed in: set stand_in.browser_user")
            code = self.sign_in(user, query)
            params = {"code": code, **({"state": query["state"]} if "state" in query else {})}
            separator = "&" if "?" in query["redirect_uri"] else "?"
            return RedirectResponse(query["redirect_uri"] + separator + urlencode(params), status_code=302)

        return await self._auth_call("authorize", answer)

    async def _auth_code_page(self, request: Request) -> Response:
        return PlainTextResponse(f"Native App Authorization Code: {request.query_params.get('code', '')}\n")

    async def _my_groups(self, request: Request) -> Response:
        failed = await self._enter(
            "my_groups",
            lambda: groups_error(503, "SERVICE_UNAVAILABLE", "the stand-in fails on purpose (5xx)"),
        )
        if failed is not None:
            return failed
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        groups = self.my_groups(token, commalist(request.query_params.get("statuses")))
        if groups is None or scheme.lower() != "bearer":
            return groups_error(401, "AUTHENTICATION_ERROR", "missing, inactive or non-Groups token")
        return JSONResponse(groups)
