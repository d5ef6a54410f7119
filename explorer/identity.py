"""Who is this browser? The owner of the sessions it saves.

With a login (``serve --basic-auth`` / OAuth) the owner is the logged-in user (``user:<name>``,
from Panel's signed ``user`` cookie). Without one, every browser gets a random owner token in a
cookie signed with the server's cookie secret on its first page load (``anon:<token>``): the
OwnerCookie auth provider sets it, and never asks anyone to log in.
"""
from __future__ import annotations

import secrets

from bokeh.server.auth_provider import AuthProvider
from tornado.web import create_signed_value, decode_signed_value

OWNER_COOKIE = "bitscape_owner"
MAX_AGE_DAYS = 400  # browsers cap cookie lifetimes at about this


def new_secret() -> str:
    """A random per-process cookie secret (anonymous ownership then ends with the process)."""
    return secrets.token_urlsafe(32)


def _decode(secret: str | None, name: str, value) -> str | None:
    if not secret or not value:
        return None
    try:
        out = decode_signed_value(secret, name, str(value), max_age_days=MAX_AGE_DAYS)
        return None if out is None else out.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None


class OwnerCookie(AuthProvider):
    """Bokeh auth provider that signs every browser in anonymously: a new browser gets a signed
    owner cookie, and the same request's session already sees it."""

    def __init__(self, secret: str):
        self._secret = secret
        super().__init__()

    @property
    def get_user(self):
        return self._user

    @property
    def login_url(self):
        return "/"  # never visited: _user always answers

    def _user(self, handler) -> str:
        token = _decode(self._secret, OWNER_COOKIE, handler.get_cookie(OWNER_COOKIE))
        if token is None:
            token = secrets.token_urlsafe(24)
            signed = create_signed_value(self._secret, OWNER_COOKIE, token).decode()
            handler.set_cookie(OWNER_COOKIE, signed, expires_days=MAX_AGE_DAYS, httponly=True, samesite="Lax")
            handler.request.cookies[OWNER_COOKIE] = signed  # the session made by this request reads it
        return f"anon:{token}"


def owner_from_cookies(cookies: dict, secret: str | None) -> str | None:
    """The owner these request cookies prove: the logged-in user, else the signed owner token."""
    user = _decode(secret, "user", cookies.get("user"))
    if user:
        return f"user:{user}"
    token = _decode(secret, OWNER_COOKIE, cookies.get(OWNER_COOKIE))
    return f"anon:{token}" if token else None


def current_owner() -> str | None:
    """The owner of the browser whose Panel session is running (None outside a server or without
    a valid cookie: the workspace then gets an owner of its own, for this page only)."""
    import panel as pn
    from panel.config import config

    ctx = getattr(pn.state.curdoc, "session_context", None) if pn.state.curdoc is not None else None
    request = getattr(ctx, "request", None)
    cookies = getattr(request, "cookies", None) or {}
    return owner_from_cookies({k: getattr(v, "value", v) for k, v in dict(cookies).items()}, config.cookie_secret)


def serve_options(cookie_secret: str | None, login: bool) -> dict:
    """pn.serve keyword arguments for ownership: a cookie secret always (random per process when
    none is given) and, without a login option, the anonymous owner cookie."""
    secret = cookie_secret or new_secret()
    opts: dict = {"cookie_secret": secret}
    if not login:
        opts["auth_provider"] = OwnerCookie(secret)
    return opts
