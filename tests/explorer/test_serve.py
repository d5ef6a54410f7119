"""`bitscape serve` as a user starts it: loopback by default, basic auth when asked."""
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None
    opener = urllib.request.build_opener(NoRedirect)
    try:
        r = opener.open(url, timeout=30)
        return r.status, r.headers, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.headers, ""


@pytest.fixture
def serve(tmp_path):
    procs = []

    def start(*args):
        port = free_port()
        p = subprocess.Popen([sys.executable, "-m", "explorer.cli", "serve", "--port", str(port),
                              "--store", str(tmp_path / "s.sqlite"), "--workers", "1", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(p)
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return port
            except OSError:
                if p.poll() is not None:
                    raise AssertionError(p.stdout.read())
                time.sleep(0.3)
        raise AssertionError("server did not start")

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=30)


def test_serves_the_dashboard_on_loopback(serve):
    port = serve()
    status, _, body = get(f"http://127.0.0.1:{port}/")
    assert status == 200 and "bitscape" in body


def test_basic_auth_guards_the_app(serve):
    port = serve("--basic-auth", "s3cret", "--cookie-secret", "cookie")
    status, headers, _ = get(f"http://127.0.0.1:{port}/")
    assert status == 302 and "login" in headers["Location"]
    status, _, body = get(f"http://127.0.0.1:{port}/login")
    assert status == 200


def test_auth_without_cookie_secret_is_refused():
    p = subprocess.run([sys.executable, "-m", "explorer.cli", "serve", "--basic-auth", "pw"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and "--cookie-secret" in p.stderr
