"""The `isthmus` command. Subcommands: `sandbox`, `run pipeline.yaml`, `dlq list|show|replay`,
`state backup`."""

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


def _add_run(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("run", help="run a pipeline file to the end of its stream",
                       description="Run the pipeline declared in a YAML file (see docs/pipeline.md), "
                                   "resuming from its last checkpoint, and print its summary.")
    p.add_argument("pipeline", help="the pipeline's YAML file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_pipeline)


def _run_pipeline(args: argparse.Namespace) -> int:
    from isthmus import errors
    from isthmus.config import load_pipeline

    try:
        pipeline = load_pipeline(args.pipeline)
        run = pipeline.run(progress=not args.no_progress)
    except errors.ConfigError as e:
        print(f"isthmus run: {e}", file=sys.stderr)
        return 2
    except errors.PipelineError as e:
        print(f"isthmus run: {e}", file=sys.stderr)
        return 1
    print(run)
    print(json.dumps(run.summary(), indent=2))
    return 0


def _add_dlq(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("dlq", help="list, show and replay dead letters",
                       description="Dead letters of a pipeline: records that failed in map or sink.")
    dsub = p.add_subparsers(dest="dlq_command", metavar="ACTION")
    dsub.required = True
    ls = dsub.add_parser("list", help="one line per dead letter")
    ls.add_argument("pipeline", help="the pipeline's YAML file, or its state .db file")
    ls.add_argument("--where", help="an SQL condition on the columns, e.g. \"stage = 'sink'\"")
    ls.add_argument("--all", action="store_true", help="include resolved ones (replayed, or superseded by a newer "
                                                        "version a later run delivered)")
    ls.set_defaults(func=_dlq_list)
    show = dsub.add_parser("show", help="one dead letter in full: record, error, traceback, response")
    show.add_argument("pipeline")
    show.add_argument("id", type=int)
    show.set_defaults(func=_dlq_show)
    rp = dsub.add_parser("replay", help="send dead letters through map and sink again")
    rp.add_argument("pipeline", help="the pipeline's YAML file (the sink to send to)")
    rp.add_argument("--where")
    rp.add_argument("--force", action="store_true",
                    help="also send superseded ones (a later run delivered a newer version of the record)")
    rp.set_defaults(func=_dlq_replay)


def _dlq_rows(args: argparse.Namespace, include_resolved: bool = False) -> List[Dict[str, Any]]:
    from isthmus.store import StateStore

    if args.pipeline.endswith((".yaml", ".yml", ".json")):
        from isthmus.config import load_pipeline
        pipe = load_pipeline(args.pipeline)
        return pipe.store.dead_letters(pipe.name, where=getattr(args, "where", None),
                                       include_resolved=include_resolved)
    return StateStore(args.pipeline, create=False).dead_letters(where=getattr(args, "where", None),
                                                  include_resolved=include_resolved)


def _dlq_list(args: argparse.Namespace) -> int:
    import time as _time

    rows = _dlq_rows(args, args.all)
    print(f"{'id':>6}  {'stage':<5}  {'status':>6}  {'attempts':>8}  {'last seen (UTC)':<19}  {'record':<20}  "
          f"{'state':<10}  error")
    for r in rows:
        seen = _time.strftime("%Y-%m-%d %H:%M:%S", _time.gmtime(r["last_seen"]))
        print(f"{r['id']:>6}  {r['stage']:<5}  {r['http_status'] or '-':>6}  {r['attempts']:>8}  {seen:<19}  "
              f"{r['record_key'][:20]:<20}  {r['resolution'] or 'open':<10}  {r['error'][:100]}")
    print(f"{len(rows)} dead letter(s)")
    return 0


def _dlq_show(args: argparse.Namespace) -> int:
    rows = [r for r in _dlq_rows(args, True) if r["id"] == args.id]
    if not rows:
        print(f"isthmus dlq show: no dead letter with id {args.id}", file=sys.stderr)
        return 1
    r = rows[0]
    for k in ("id", "record_key", "stage", "error", "http_status", "attempts", "run_id"):
        print(f"{k:<17} {r[k]}")
    print("record:")
    print(json.dumps(r["record"], indent=2, ensure_ascii=False))
    if r.get("response_excerpt"):
        print("response excerpt:\n" + r["response_excerpt"])
    if r.get("traceback"):
        print(r["traceback"].rstrip())
    return 0


def _dlq_replay(args: argparse.Namespace) -> int:
    from isthmus.config import load_pipeline

    result = load_pipeline(args.pipeline).replay_dead_letters(where=args.where, force=args.force)
    print(json.dumps(result))
    return 0 if result["failed"] == 0 else 1


def _add_state(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("state", help="look after a pipeline's state file",
                       description="A pipeline's state file: checkpoints, dead letters, run history.")
    ssub = p.add_subparsers(dest="state_command", metavar="ACTION")
    ssub.required = True
    bk = ssub.add_parser("backup", help="copy a state file safely, even while a run writes it",
                         description="Copy a state file with SQLite's backup API: a consistent copy even "
                                     "while a run writes it, which `cp` of a WAL database is not.")
    bk.add_argument("state", help="the state .db file")
    bk.add_argument("dest", help="the copy to create (must not exist)")
    bk.set_defaults(func=_state_backup)


def _state_backup(args: argparse.Namespace) -> int:
    from isthmus import errors
    from isthmus.store import StateStore

    try:
        store = StateStore(args.state, create=False)
        try:
            store.backup(args.dest)
        finally:
            store.close()
    except errors.StateError as e:
        print(f"isthmus state backup: {e}", file=sys.stderr)
        return 1
    print(f"backed up {args.state} to {args.dest}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="isthmus", description="isthmus integration engine")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_sandbox(sub)
    _add_run(sub)
    _add_dlq(sub)
    _add_state(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
