"""Who owns a browser's sessions: the logged-in user, else a signed per-browser token; a forged,
unsigned or foreign-secret cookie proves nothing."""
from http.cookies import SimpleCookie

from tornado.web import create_signed_value

from explorer.identity import OWNER_COOKIE, OwnerCookie, owner_from_cookies, serve_options

SECRET = "s" * 40


class FakeRequest:
    def __init__(self, cookies: dict):
        self.cookies = SimpleCookie()
        for k, v in cookies.items():
            self.cookies[k] = v


class FakeHandler:
    """The part of a Tornado RequestHandler the provider uses."""

    def __init__(self, cookies: dict):
        self.request = FakeRequest(cookies)
        self.set = {}

    def get_cookie(self, name):
        c = self.request.cookies.get(name)
        return None if c is None else c.value

    def set_cookie(self, name, value, **kw):
        self.set[name] = (value, kw)


def plain(request) -> dict:
    return {k: v.value for k, v in request.cookies.items()}


def test_a_new_browser_gets_a_signed_token_that_its_first_request_already_carries():
    provider = OwnerCookie(SECRET)
    h = FakeHandler({})
    user = provider.get_user(h)
    assert user.startswith("anon:") and OWNER_COOKIE in h.set
    value, kw = h.set[OWNER_COOKIE]
    assert kw["httponly"] and kw["samesite"] == "Lax"
    assert owner_from_cookies(plain(h.request), SECRET) == user  # the session of this very request
    # the next request brings the cookie back: same owner, nothing set again
    again = FakeHandler({OWNER_COOKIE: value})
    assert provider.get_user(again) == user and again.set == {}


def test_forged_cookies_prove_nothing():
    token = create_signed_value(SECRET, OWNER_COOKIE, "alice").decode()
    assert owner_from_cookies({OWNER_COOKIE: token}, SECRET) == "anon:alice"
    assert owner_from_cookies({OWNER_COOKIE: "alice"}, SECRET) is None
    assert owner_from_cookies({OWNER_COOKIE: token}, "another secret" * 3) is None
    assert owner_from_cookies({OWNER_COOKIE: token}, None) is None
    other_name = create_signed_value(SECRET, "something-else", "alice").decode()
    assert owner_from_cookies({OWNER_COOKIE: other_name}, SECRET) is None
    # a forged cookie gets replaced by a fresh owner, not accepted
    h = FakeHandler({OWNER_COOKIE: token[:-3] + "abc"})
    assert OwnerCookie(SECRET).get_user(h) != "anon:alice" and OWNER_COOKIE in h.set


def test_a_logged_in_user_is_the_owner():
    user = create_signed_value(SECRET, "user", "alice").decode()
    anon = create_signed_value(SECRET, OWNER_COOKIE, "tok").decode()
    assert owner_from_cookies({"user": user, OWNER_COOKIE: anon}, SECRET) == "user:alice"
    # an unsigned user cookie (or Panel's unsigned is_guest flag) is not a login
    assert owner_from_cookies({"user": "alice", "is_guest": "1", OWNER_COOKIE: anon}, SECRET) == "anon:tok"


def test_serve_options_always_have_a_cookie_secret():
    a, b = serve_options(None, login=False), serve_options(None, login=False)
    assert a["cookie_secret"] and a["cookie_secret"] != b["cookie_secret"]  # random per process
    assert isinstance(a["auth_provider"], OwnerCookie)
    given = serve_options("my secret", login=True)
    assert given == {"cookie_secret": "my secret"}  # a login option brings its own auth provider
