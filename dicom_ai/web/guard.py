"""Per-request identity and permission checks used by every page, action and API route."""

from __future__ import annotations

import secrets

from fastapi import HTTPException, Request

from dicom_ai.web.auth import CSRF_COOKIE, SESSION_COOKIE, Authenticator, Identity


class NeedLogin(Exception):
    """No valid session or token: pages redirect to /login, the API answers 401."""


def csrf_cookie_value(request: Request) -> str:
    """Open mode's CSRF token: the cookie's, or a fresh one the middleware sets on the response."""
    value = request.cookies.get(CSRF_COOKIE)
    if not value:
        value = getattr(request.state, "new_csrf", None) or secrets.token_urlsafe(32)
        request.state.new_csrf = value
    return value


def identify(request: Request) -> Identity | None:
    auth: Authenticator = request.app.state.auth
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return auth.from_token(header[7:].strip())
    if auth.open:
        return auth.anonymous(csrf_cookie_value(request))
    return auth.from_session(request.cookies.get(SESSION_COOKIE))


def viewer(request: Request) -> Identity:
    """Anyone logged in (either role)."""
    identity = identify(request)
    if identity is None:
        raise NeedLogin()
    request.state.identity = identity
    return identity


def operator(request: Request, csrf_token: str | None) -> Identity:
    """An operator, with the session's CSRF token (form field or X-CSRF-Token header) on cookie requests."""
    identity = viewer(request)
    if not identity.may_act:
        raise HTTPException(403, f"{identity.name} has the read-only role; actions need the operator role")
    presented = csrf_token or request.headers.get("x-csrf-token")
    if not Authenticator.csrf_matches(identity, presented):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
    return identity
