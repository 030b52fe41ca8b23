"""Accounts and browser sessions."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from app.api import browser
from app.api.common import (
    JSONResponse,
    caller,
    client_address,
    cookie_login,
    logged_in,
    read_json,
    scheme,
    services,
)
from app.errors import ApiError, BadRequest, NotFound, Unauthorized

# An answer that sets or clears a session cookie is no cache's to keep.
NOT_STORED = {"Cache-Control": "no-store"}


async def create_account(request: Request) -> Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest('expected JSON {"username": JID, "password": string}')
    jid = await services(request).accounts.create(
        body.get("username"), body.get("password"), client_address(request)
    )
    return JSONResponse({"username": jid}, 201)


async def show_account(request: Request) -> Response:
    """The caller's account, with the API key that Basic auth takes in place of the password."""
    jid = await caller(request)
    account = await services(request).store.get_account(jid)
    if account is None:  # deleted since the login was cached
        raise Unauthorized("no such account")
    return JSONResponse({"username": jid, "api_key": account.api_key})


async def change_password(request: Request) -> Response:
    """``{"old_password", "new_password"}``: 204; the old password stops working at once, on
    every node, and what was opened with the account's credentials closes (app/lifecycle.py)."""
    jid = await caller(request)
    body = await read_json(request)
    if not isinstance(body, dict) or "old_password" not in body or "new_password" not in body:
        raise BadRequest('expected JSON {"old_password": string, "new_password": string}')
    await services(request).lifecycle.change_password(
        jid, body["old_password"], body["new_password"], client_address(request)
    )
    return Response(status_code=204)


async def new_api_key(request: Request) -> Response:
    """A new API key, ``{"api_key"}``; the old one stops working at once, on every node."""
    jid = await caller(request)
    api_key = await services(request).lifecycle.new_api_key(jid)
    return JSONResponse({"api_key": api_key}, headers=NOT_STORED)


async def delete_account(request: Request) -> Response:
    """``{"password"}``: 204, and the account is gone (app/lifecycle.py says what stays)."""
    jid = await caller(request)
    body = await read_json(request)
    if not isinstance(body, dict) or "password" not in body:
        raise BadRequest('expected JSON {"password": string}: the account\'s password')
    await services(request).lifecycle.delete(jid, body["password"], client_address(request))
    cookie = browser.clear_cookie(scheme(request) == "https")
    return Response(status_code=204, headers={"Set-Cookie": cookie, **NOT_STORED})


async def start_session(request: Request) -> Response:
    """A browser login: HTTP Basic (password or API key, checked and limited as every login)
    in, a session cookie out. A session the request's cookie named before ends."""
    s = services(request)
    authorization, address = request.headers.get("authorization"), client_address(request)
    jid = await s.accounts.authenticate(authorization, address)
    if old := request.cookies.get(browser.COOKIE):
        await s.sessions.end(old)
    session = await s.sessions.start(jid)
    try:
        # Checked again now that the session is stored (from the cache, unless a change
        # dropped it): a password change, a new key, a ban or a deletion that came between
        # the check and the insert ended every session it saw, and this one it may not have.
        # One that comes after the insert ends this one too.
        await s.accounts.authenticate(authorization, address)
    except ApiError:
        await s.sessions.end(session.token)
        raise
    cookie = browser.set_cookie(
        session.token, s.settings.session_seconds, scheme(request) == "https"
    )
    return JSONResponse({"username": jid}, headers={"Set-Cookie": cookie, **NOT_STORED})


async def show_session(request: Request) -> Response:
    """Who the browser's session logs in (for a page to tell without a 401, whose Basic
    challenge would make the browser ask for a password): 404 when nothing does."""
    if not logged_in(request):
        raise NotFound("no session: POST /api/session with Basic credentials")
    try:
        jid = await caller(request)
    except Unauthorized:
        raise NotFound("no session (it ended or expired): log in again") from None
    return JSONResponse({"username": jid}, headers=NOT_STORED)


async def end_session(request: Request) -> Response:
    """Log out: the session the cookie names ends on every node, and the cookie is cleared.
    204 whether or not there was one; Basic credentials, if sent, must be good."""
    if request.headers.get("authorization"):
        await caller(request)
    else:
        cookie_login(request)  # a page elsewhere may not log the user out either
    if token := request.cookies.get(browser.COOKIE):
        await services(request).sessions.end(token)
    cookie = browser.clear_cookie(scheme(request) == "https")
    return Response(status_code=204, headers={"Set-Cookie": cookie, **NOT_STORED})
