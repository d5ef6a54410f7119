"""`bitscape serve` as a user starts it: loopback by default, basic auth when asked."""
import json
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
        r = opener.open(url, timeout=180)  # the first render is slow on a loaded 2-core machine
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
                    raise AssertionError(p.stdout.read()) from None
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


_PICKERS = """
import importlib, json, pkgutil, sys
import holoviews.plotting.bokeh  # registers the models the page uses
import panel.models
from bokeh.client import pull_session
from bokeh.models import Select
for m in pkgutil.iter_modules(panel.models.__path__):
    try:
        importlib.import_module(f"panel.models.{m.name}")
    except ImportError:
        pass
s = pull_session(url=f"http://127.0.0.1:{sys.argv[1]}/")
try:
    print(json.dumps({m.title: [o if isinstance(o, str) else o[1] for o in m.options]
                      for m in s.document.select({"type": Select})}))
finally:
    s.close()
"""


def picker_options(port) -> dict[str, list[str]]:
    """The labels each Select of a fresh dashboard session offers (read over the Bokeh websocket).

    Runs in a child process: importing every Panel model here would make later pages served by
    this test process ask for those models' CDN scripts."""
    p = subprocess.run([sys.executable, "-c", _PICKERS, str(port)], capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_own_model_and_dataset_join_the_pickers(serve):
    port = serve("--model", "tests.explorer.usercode:tiny_mlp", "--dataset", "tests.explorer.usercode:blobs",
                 "--dataset", "tests.explorer.usercode:blobs")
    opts = picker_options(port)
    models, datasets = opts["model"], opts["dataset"]
    assert any(o.startswith("tests.explorer.usercode:tiny_mlp (your model") for o in models)
    assert [o for o in datasets if o.startswith("tests.explorer.usercode:blobs (your dataset")] != []
    assert "lenet5" in models and "digits" in datasets
    # availability is said up front, in words: CIFAR-10 is not on this machine
    cifar = [o for o in datasets if o.startswith("cifar10")]
    assert cifar and "not installed" in cifar[0] and "CIFAR-10 images" in cifar[0] and "--" not in cifar[0]
    resnet = [o for o in models if o.startswith("resnet20")]
    assert resnet and "cifar10" in resnet[0] and "not installed" in resnet[0]


@pytest.mark.parametrize("flag, ref, words", [
    ("--model", "tests.explorer.usercode:nope", "has no callable 'nope'"),
    ("--model", "no_such_package_xyz:fn", "cannot import module"),
    ("--dataset", "tests.explorer.usercode:not_a_dataset", "must return (x_train, y_train, x_test, y_test)"),
    ("--dataset", "digits", "package.module:function"),
])
def test_bad_own_code_stops_serve_with_one_line(tmp_path, flag, ref, words):
    p = subprocess.run([sys.executable, "-m", "explorer.cli", "serve", "--port", str(free_port()),
                        "--store", str(tmp_path / "s.sqlite"), flag, ref], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and words in p.stderr and "Traceback" not in p.stderr
