"""The `isthmus` command. Subcommands: `sandbox` (more, such as `run` and `dlq`, plug in here)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any, Dict, List, Optional

__all__ = ["main", "build_parser"]


def _add_sandbox(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from isthmus.sandbox import AUTH_MODES, PAGINATION_STYLES

    p = sub.add_parser("sandbox", help="serve the mock SaaS API until Ctrl-C",
                       description="Serve the sandbox mock API on 127.0.0.1 until Ctrl-C and print "
                                   "its URL and credentials. See docs/sandbox.md.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="0 picks a free port (default 8080)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--records", type=int, help="synthetic records per resource")
    p.add_argument("--seed", type=int)
    p.add_argument("--updates-per-second", type=float, dest="updates_per_second")
    p.add_argument("--pagination", choices=PAGINATION_STYLES)
    p.add_argument("--max-page-size", type=int, dest="max_page_size")
    p.add_argument("--auth", choices=AUTH_MODES)
    p.add_argument("--api-key-in", choices=("header", "query"), dest="api_key_in")
    p.add_argument("--token-lifetime", type=float, dest="token_lifetime", help="seconds")
    p.add_argument("--rotate-refresh-tokens", action="store_true", default=None, dest="rotate_refresh_tokens")
    p.add_argument("--signing-secret", dest="signing_secret", help="require HMAC-signed requests")
    p.add_argument("--rate-limit", type=float, dest="rate_limit", help="requests per second per credential")
    p.add_argument("--burst", type=int)
    p.add_argument("--daily-quota", type=int, dest="daily_quota")
    p.add_argument("--retry-after", choices=("seconds", "http-date"), dest="retry_after")
    p.add_argument("--overload-capacity", type=float, dest="overload_capacity")
    p.add_argument("--overload-behavior", choices=("errors", "stall", "mixed"), dest="overload_behavior")
    p.add_argument("--config", help="more options as a JSON object (e.g. faults)")
    p.set_defaults(func=_run_sandbox)


_CLI_ONLY = {"host", "port", "threads", "config", "func", "command"}


def _run_sandbox(args: argparse.Namespace) -> int:
    from isthmus.sandbox import Sandbox

    options: Dict[str, Any] = {}
    if args.config:
        try:
            options.update(json.loads(args.config))
        except ValueError as e:
            print(f"isthmus sandbox: --config is not valid JSON: {e}", file=sys.stderr)
            return 2
    for key, value in vars(args).items():
        if key not in _CLI_ONLY and value is not None:
            options[key] = value
    try:
        api = Sandbox(host=args.host, port=args.port, threads=args.threads, **options)
        api.start()
    except ValueError as e:
        print(f"isthmus sandbox: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    o = api.options
    print(f"isthmus sandbox serving on {api.url}  (Ctrl-C to stop)")
    print(f"  resources      {api.url}/v1/contacts  /v1/companies  /v1/deals  ({o['records']} records each)")
    print(f"  pagination     {o['pagination']}  (max page size {o['max_page_size']})")
    print(f"  auth           {o['auth']}")
    if o["auth"] == "oauth2":
        print(f"  token_url      {api.token_url}")
        print(f"  authorize_url  {api.authorize_url}")
        print(f"  client_id      {api.client_id}")
        print(f"  client_secret  {api.client_secret}")
    elif o["auth"] == "api_key":
        where = "header X-API-Key" if o["api_key_in"] == "header" else "query parameter api_key"
        print(f"  api_key        {api.api_key}  ({where})")
    elif o["auth"] == "basic":
        print(f"  username       {api.username}")
        print(f"  password       {api.password}")
    elif o["auth"] == "bearer":
        print(f"  bearer_token   {api.bearer_token}")
    if o["rate_limit"]:
        print(f"  rate limit     {o['rate_limit']}/s burst {o['burst']}")
    print(f"  stats          {api.url}/stats")
    sys.stdout.flush()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        api.stop()
    print("isthmus sandbox stopped")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="isthmus", description="isthmus integration engine")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_sandbox(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
