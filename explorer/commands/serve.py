"""``bitscape serve``: the dashboard, on 127.0.0.1 by default."""
from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("serve", help="start the dashboard in the browser (loopback by default)")
    p.add_argument("--port", type=int, default=5006)
    p.add_argument("--address", default="127.0.0.1",
                   help="interface to bind (default loopback; use 0.0.0.0 only behind auth or a proxy)")
    p.add_argument("--allow-websocket-origin", action="append", default=[], metavar="HOST[:PORT]",
                   help="extra origins allowed to connect (needed when serving on a shared host)")
    p.add_argument("--basic-auth", default=None,
                   help="a password, or a JSON file of {user: password}: Panel's basic auth (needs --cookie-secret)")
    p.add_argument("--cookie-secret", default=None,
                   help="signs the login and session-owner cookies; without it a random one per process "
                        "(a restart then forgets which browser owns which session)")
    p.add_argument("--oauth-provider", default=None, help="Panel OAuth provider (github, google, azure, okta, generic...)")
    p.add_argument("--oauth-key", default=None)
    p.add_argument("--oauth-secret", default=None)
    p.add_argument("--oauth-redirect-uri", default=None)
    p.add_argument("--oauth-encryption-key", default=None)
    p.add_argument("--store", default=None, help="results store (SQLite file); default in the user data dir")
    p.add_argument("--workers", type=int, default=None, help="local worker processes for jobs (default: cores)")
    p.add_argument("--scheduler", default=None, help="run jobs on an existing Dask cluster, tcp://HOST:PORT")
    p.add_argument("--model", action="append", default=[], metavar="PKG.MOD:FN",
                   help="offer your own model in the dashboard's model picker (repeatable); FN(input_shape=, "
                        "num_classes=) returns a torch.nn.Module. Browsers can only pick among these and the zoo")
    p.add_argument("--dataset", action="append", default=[], metavar="PKG.MOD:FN",
                   help="offer your own dataset in the dataset picker (repeatable); FN() returns "
                        "(x_train, y_train, x_test, y_test) with images as (N, C, H, W). Loaded once at start-up")
    p.add_argument("--show", action="store_true", help="open a browser tab")
    p.add_argument("--profile-file", action="append", default=[], metavar="JSON",
                   help="add a profile file (e.g. from 'bitscape calibrate') to the dashboard's profiles (repeatable)")
    p.set_defaults(func=run)


def register_user_code(models: list[str], datasets: list[str]) -> None:
    """Check every --model/--dataset reference now (a bad one stops the server with one line) and
    add it to the pickers."""
    from engine.models.data import register_dataset
    from engine.models.zoo import register_model
    for ref in datasets:
        spec = register_dataset(ref)
        print(f"dataset {ref}: {spec.description}", file=sys.stderr, flush=True)
    for ref in models:
        register_model(ref)
        print(f"model {ref}: offered in the model picker", file=sys.stderr, flush=True)


def run(args) -> int:
    import panel as pn

    from engine.errors import UserError
    from explorer.app import create_app
    from explorer.identity import serve_options
    from explorer.state import services

    if (args.basic_auth or args.oauth_provider) and not args.cookie_secret:
        raise UserError("--basic-auth and --oauth-provider need --cookie-secret")
    if args.basic_auth and args.oauth_provider:
        raise UserError("choose --basic-auth or --oauth-provider, not both")
    register_user_code(args.model, args.dataset)
    from engine.cost.profiles import add_profile_file
    for path in args.profile_file:
        add_profile_file(path)
    services.configure(store_path=args.store, workers=args.workers, scheduler=args.scheduler)
    origins = [f"{args.address}:{args.port}", f"localhost:{args.port}", f"127.0.0.1:{args.port}",
               *args.allow_websocket_origin]
    kwargs = serve_options(args.cookie_secret, login=bool(args.basic_auth or args.oauth_provider))
    if args.basic_auth:
        kwargs.update(basic_auth=args.basic_auth)
    if args.oauth_provider:
        kwargs.update(oauth_provider=args.oauth_provider, oauth_key=args.oauth_key, oauth_secret=args.oauth_secret,
                      oauth_redirect_uri=args.oauth_redirect_uri, oauth_encryption_key=args.oauth_encryption_key)
    print(f"bitscape dashboard on http://{args.address}:{args.port}/  (Ctrl+C to stop)", file=sys.stderr, flush=True)
    try:
        server = pn.serve({"/": create_app}, port=args.port, address=args.address, websocket_origin=origins,
                          show=args.show, title="bitscape", start=False, **kwargs)
        _stop_on_signals(server)
        server.start()
        server.io_loop.start()
    finally:
        _ignore_signals()  # a second Ctrl+C must not cut the shutdown short and orphan the workers
        print("bitscape: stopping the server and its job workers", file=sys.stderr, flush=True)
        services.shutdown()
    return 0


def _stop_on_signals(server) -> None:
    """Ctrl+C (SIGINT) and SIGTERM stop the server's loop; ``run`` then shuts the job runner down."""
    import signal

    def stop(*_):
        server.io_loop.asyncio_loop.call_soon_threadsafe(server.io_loop.stop)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def _ignore_signals() -> None:
    import signal
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
