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
    p.add_argument("--cookie-secret", default=None)
    p.add_argument("--oauth-provider", default=None, help="Panel OAuth provider (github, google, azure, okta, generic...)")
    p.add_argument("--oauth-key", default=None)
    p.add_argument("--oauth-secret", default=None)
    p.add_argument("--oauth-redirect-uri", default=None)
    p.add_argument("--oauth-encryption-key", default=None)
    p.add_argument("--store", default=None, help="results store (SQLite file); default in the user data dir")
    p.add_argument("--workers", type=int, default=None, help="local worker processes for jobs (default: cores)")
    p.add_argument("--scheduler", default=None, help="run jobs on an existing Dask cluster, tcp://HOST:PORT")
    p.add_argument("--show", action="store_true", help="open a browser tab")
    p.add_argument("--profile-file", action="append", default=[], metavar="JSON",
                   help="add a profile file (e.g. from 'bitscape calibrate') to the dashboard's profiles (repeatable)")
    p.set_defaults(func=run)


def run(args) -> int:
    import panel as pn

    from engine.errors import UserError
    from explorer.app import create_app
    from explorer.state import services

    if (args.basic_auth or args.oauth_provider) and not args.cookie_secret:
        raise UserError("--basic-auth and --oauth-provider need --cookie-secret")
    if args.basic_auth and args.oauth_provider:
        raise UserError("choose --basic-auth or --oauth-provider, not both")
    from engine.cost.profiles import add_profile_file
    for path in args.profile_file:
        add_profile_file(path)
    services.configure(store_path=args.store, workers=args.workers, scheduler=args.scheduler)
    origins = [f"{args.address}:{args.port}", f"localhost:{args.port}", f"127.0.0.1:{args.port}",
               *args.allow_websocket_origin]
    kwargs = {}
    if args.basic_auth:
        kwargs.update(basic_auth=args.basic_auth, cookie_secret=args.cookie_secret)
    if args.oauth_provider:
        kwargs.update(oauth_provider=args.oauth_provider, oauth_key=args.oauth_key, oauth_secret=args.oauth_secret,
                      oauth_redirect_uri=args.oauth_redirect_uri, oauth_encryption_key=args.oauth_encryption_key,
                      cookie_secret=args.cookie_secret)
    print(f"bitscape dashboard on http://{args.address}:{args.port}/  (Ctrl+C to stop)", file=sys.stderr, flush=True)
    try:
        pn.serve({"/": create_app}, port=args.port, address=args.address, websocket_origin=origins,
                 show=args.show, title="bitscape", **kwargs)
    finally:
        services.shutdown()
    return 0
