"""The `isthmus` command. Subcommands: `sandbox`, `run pipeline.yaml`, `worker pipeline.yaml`,
`submit pipeline.yaml`, `status pipeline.yaml`, `dlq list|show|replay`, `schema pipeline`,
`state backup`, `fleet add|list|run|serve|pause|resume|relink|remove`.

Every command runs inside one wrapper in ``main()``: an isthmus error, Ctrl-C or a closed pipe
becomes one line on stderr and an exit code from ``EXIT_CODES``, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
from typing import Any, Dict, List, Optional

from isthmus import errors

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DEAD_LETTERS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class UsageError(Exception):
    """A command line that cannot be carried out as given (a missing file, bad --where SQL)."""


# First match wins: the most specific classes come first.
EXIT_CODES = (
    (errors.ConfigError, EXIT_USAGE),
    (errors.InvalidURL, EXIT_USAGE),
    (UsageError, EXIT_USAGE),
    (errors.IsthmusError, EXIT_FAILED),
)

EPILOG = """exit codes:
  0    ok
  1    the run failed (or a replay left records failing)
  2    bad configuration or usage
  3    the run finished with dead letters and --fail-on-dead-letters was given
  130  interrupted (Ctrl-C)"""


def _add_sandbox(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from isthmus.sandbox import AUTH_MODES, PAGINATION_STYLES

    p = sub.add_parser("sandbox", help="serve the mock SaaS API until Ctrl-C",
                       description="Serve the sandbox mock API on 127.0.0.1 until Ctrl-C and print "
                                   "its URL and credentials. See docs/sandbox.md.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="0 picks a free port (default 8080)")
    p.add_argument("--threads", type=int, default=1, help="I/O threads (default 1)")
    p.add_argument("--records", type=int, help="synthetic records per resource")
    p.add_argument("--seed", type=int, help="makes records and faults repeatable (default 42)")
    p.add_argument("--updates-per-second", type=float, dest="updates_per_second",
                   help="records changed per second")
    p.add_argument("--pagination", choices=PAGINATION_STYLES, help="page style of GET /v1/<resource>")
    p.add_argument("--max-page-size", type=int, dest="max_page_size", help="larger limits are clamped to it")
    p.add_argument("--auth", choices=AUTH_MODES, help="what /v1/* requires")
    p.add_argument("--api-key-in", choices=("header", "query"), dest="api_key_in",
                   help="where the API key goes")
    p.add_argument("--token-lifetime", type=float, dest="token_lifetime", help="OAuth2 token lifetime in seconds")
    p.add_argument("--rotate-refresh-tokens", action="store_true", default=None, dest="rotate_refresh_tokens",
                   help="single-use refresh tokens")
    p.add_argument("--signing-secret", dest="signing_secret", help="require HMAC-signed requests")
    p.add_argument("--rate-limit", type=float, dest="rate_limit", help="requests per second per credential")
    p.add_argument("--burst", type=int, help="requests allowed back to back")
    p.add_argument("--daily-quota", type=int, dest="daily_quota", help="requests per credential per UTC day")
    p.add_argument("--retry-after", choices=("seconds", "http-date"), dest="retry_after",
                   help="form of Retry-After on a 429")
    p.add_argument("--overload-capacity", type=float, dest="overload_capacity",
                   help="hidden capacity in requests/s across all credentials")
    p.add_argument("--overload-behavior", choices=("errors", "stall", "mixed"), dest="overload_behavior",
                   help="what happens above the capacity")
    p.add_argument("--tenants", type=int, help="serve this many customers, each with its own credentials and "
                                                "records (needs --auth)")
    p.add_argument("--app-rate-limit", type=float, dest="app_rate_limit",
                   help="requests per second across every credential (the app's allowance)")
    p.add_argument("--app-burst", type=int, dest="app_burst", help="requests the app may send back to back")
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
            raise UsageError(f"--config is not valid JSON: {e}") from None
    for key, value in vars(args).items():
        if key not in _CLI_ONLY and value is not None:
            options[key] = value
    try:
        api = Sandbox(host=args.host, port=args.port, threads=args.threads, **options)
        api.start()
    except ValueError as e:  # the sandbox names the bad option
        raise UsageError(str(e)) from None
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
    if o["auth"] == "api_key":
        where = "header X-API-Key" if o["api_key_in"] == "header" else "query parameter api_key"
        print(f"  api key in     {where}")
    for label, who in ([(f"tenant {t.index}", t) for t in api.tenants] if api.tenants else [("", api)]):
        if label:
            print(f"  {label}")
        pad = "    " if label else "  "
        if o["auth"] == "oauth2":
            print(f"{pad}client_id      {who.client_id}")
            print(f"{pad}client_secret  {who.client_secret}")
        elif o["auth"] == "api_key":
            print(f"{pad}api_key        {who.api_key}")
        elif o["auth"] == "basic":
            print(f"{pad}username       {who.username}")
            print(f"{pad}password       {who.password}")
        elif o["auth"] == "bearer":
            print(f"{pad}bearer_token   {who.bearer_token}")
    if o["rate_limit"]:
        print(f"  rate limit     {o['rate_limit']}/s burst {o['burst']}" + (" per tenant" if api.tenants else ""))
    if o.get("app_rate_limit"):
        print(f"  app limit      {o['app_rate_limit']}/s burst {o['app_burst']} across every credential")
    print(f"  stats          {api.url}/stats")
    sys.stdout.flush()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        api.stop()
    print("isthmus sandbox stopped")
    return 0


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run a pipeline file to the end of its stream", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Run the pipeline declared in a YAML file (see docs/pipeline.md), "
                                   "resuming from its last checkpoint, and print its summary.")
    p.add_argument("pipeline", help="the pipeline's YAML file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--fail-on-dead-letters", action="store_true",
                   help="exit 3 when the run finished but dead-lettered records")
    p.set_defaults(func=_run_pipeline)


def _run_pipeline(args: argparse.Namespace) -> int:
    from isthmus.config import load_pipeline

    run = load_pipeline(args.pipeline).run(progress=not args.no_progress)
    summary = run.summary()
    print(run)
    print(json.dumps(summary, indent=2))
    if args.fail_on_dead_letters and summary.get("dead_lettered"):
        return EXIT_DEAD_LETTERS
    return EXIT_OK


def _add_workers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    w = sub.add_parser("worker", help="work a pipeline's page tasks from its queue", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Take page tasks of the pipeline (its file sets queue: and coordination:) "
                                   "and work them until SIGTERM or Ctrl-C. See docs/scaleout.md.")
    w.add_argument("pipeline", help="the pipeline's YAML file")
    w.add_argument("--concurrency", type=int, default=1, help="tasks worked at once (default 1)")
    w.add_argument("--until-idle", type=float, dest="until_idle",
                   help="exit once the queue has had no task for this many seconds")
    w.add_argument("--lease", type=float, default=10.0,
                   help="seconds a partition claim and the heartbeat live without renewal (default 10)")
    w.set_defaults(func=_run_worker)
    s = sub.add_parser("submit", help="start a run of a pipeline on its workers; prints the run id",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Publish one first-page task per partition of the pipeline's source to "
                                   "its queue and print the run id.")
    s.add_argument("pipeline", help="the pipeline's YAML file")
    s.set_defaults(func=_submit)
    st = sub.add_parser("status", help="queue depth, workers alive, dead letters and runs of a pipeline",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Show the pipeline's task queue (ready, leased, delayed, dead), the "
                                    "tasks in flight, the workers alive (heartbeats in Redis), open dead "
                                    "letters and the progress of each run still going.")
    st.add_argument("pipeline", help="the pipeline's YAML file")
    st.add_argument("--json", action="store_true", help="print the status as one JSON object")
    st.set_defaults(func=_status)


def _run_worker(args: argparse.Namespace) -> int:
    from isthmus.config import load_pipeline
    from isthmus.worker import Worker

    worker = Worker(load_pipeline(args.pipeline), concurrency=args.concurrency, lease=args.lease)
    # SIGTERM: finish the task each thread is on, then exit (a kill -9 re-runs at most those).
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    print(f"{worker!r} on {worker.queue.url} ({worker.pipeline.queue_name})", file=sys.stderr, flush=True)
    stats = worker.run(until_idle=args.until_idle)
    print(json.dumps({"worker": worker.name, **stats}))
    return EXIT_OK


def _submit(args: argparse.Namespace) -> int:
    from isthmus.config import load_pipeline

    pipeline = load_pipeline(args.pipeline)
    from isthmus.worker import halt_of

    halt = halt_of(pipeline)
    run_id = pipeline.submit()
    if halt is not None:
        print(f"run {run_id} of {pipeline.name} resumed after its halt ({halt['error']})", file=sys.stderr)
    else:
        print(f"run {run_id} of {pipeline.name}: {len(pipeline.source.partitions)} first-page task(s) on "
              f"{pipeline.queue_name}", file=sys.stderr)
    print(run_id)
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from isthmus.config import load_pipeline
    from isthmus.worker import status

    report = status(load_pipeline(args.pipeline))
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    q = report["queue"]
    print(f"pipeline {report['pipeline']}  queue {report['queue_name']} on {report['queue_url']}")
    print(f"  tasks      ready {q['ready']}  leased {q['leased']}  delayed {q['delayed']}  dead {q['dead']}")
    print(f"  in flight  {report['in_flight']}")
    print(f"  workers    {len(report['workers'])} alive")
    for w in report["workers"]:
        print(f"    {w['name']}  concurrency {w['concurrency']}  in flight {w['in_flight']}  pages {w['pages']}  "
              f"stale {w['stale']}")
    print(f"  dead letters  {report['dead_letters']} open in {report['state']}")
    halt = report["halt"]
    if halt is not None:
        print(f"  HALTED     run {halt['run']} at partition {halt['partition']} page {halt['seq']}: {halt['error']}")
        print(f"             fix the cause, then `isthmus submit {args.pipeline}` resumes the run")
    for r in report["runs"]:
        c = r["counts"]
        print(f"  run {r['run_id']} {r['status']}: partitions {r['done']}/{r['partitions']} done, {r['dead']} "
              f"dead, {r['going']} going; pages {r['pages']}, read {c['read']:,.0f}, written {c['written']:,.0f}, "
              f"dead-lettered {c['dead_lettered']:,.0f}")
    return EXIT_OK


def _add_dlq(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dlq", help="list, show and replay dead letters", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Dead letters of a pipeline: records that failed in map or sink. "
                                   "list and show read only the state file: the YAML's ${VAR}s of the "
                                   "source and the sink need not be set.")
    dsub = p.add_subparsers(dest="dlq_command", metavar="ACTION", help="what to do")
    dsub.required = True
    where_help = "an SQL condition on the columns, e.g. \"stage = 'sink'\""
    ls = dsub.add_parser("list", help="one line per dead letter", epilog=EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    ls.add_argument("pipeline", help="the pipeline's YAML file, or its state .db file")
    ls.add_argument("--where", help=where_help)
    ls.add_argument("--all", action="store_true", help="include resolved ones (replayed, or superseded by a newer "
                                                        "version a later run delivered)")
    ls.set_defaults(func=_dlq_list)
    show = dsub.add_parser("show", help="one dead letter in full: record, error, traceback, response",
                           epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    show.add_argument("pipeline", help="the pipeline's YAML file, or its state .db file")
    show.add_argument("id", type=int, help="the dead letter's id, as dlq list shows it")
    show.set_defaults(func=_dlq_show)
    rp = dsub.add_parser("replay", help="send dead letters through map and sink again", epilog=EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    rp.add_argument("pipeline", help="the pipeline's YAML file (the sink to send to)")
    rp.add_argument("--where", help=where_help)
    rp.add_argument("--force", action="store_true",
                    help="also send superseded ones (a later run delivered a newer version of the record)")
    rp.set_defaults(func=_dlq_replay)


def _dlq_rows(args: argparse.Namespace, include_resolved: bool = False) -> List[Dict[str, Any]]:
    from isthmus.store import StateStore

    name: Optional[str] = None
    state = args.pipeline
    if args.pipeline.endswith((".yaml", ".yml", ".json")):
        from isthmus.config import pipeline_state
        name, state = pipeline_state(args.pipeline)
    # Opening a missing file would create an empty state file and report nothing wrong.
    if not os.path.exists(state):
        raise UsageError(f"state file {state} does not exist")
    where = getattr(args, "where", None)
    # A bad --where is a ConfigError from the store naming the columns: exit 2, not a damaged file.
    rows: List[Dict[str, Any]] = StateStore(state, create=False).dead_letters(name, where=where,
                                                                 include_resolved=include_resolved)
    return rows


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
    return EXIT_OK


def _dlq_show(args: argparse.Namespace) -> int:
    rows = [r for r in _dlq_rows(args, True) if r["id"] == args.id]
    if not rows:
        raise UsageError(f"no dead letter with id {args.id}")
    r = rows[0]
    for k in ("id", "record_key", "stage", "error", "http_status", "attempts", "run_id"):
        print(f"{k:<17} {r[k]}")
    print("record:")
    print(json.dumps(r["record"], indent=2, ensure_ascii=False))
    if r.get("response_excerpt"):
        print("response excerpt:\n" + r["response_excerpt"])
    if r.get("traceback"):
        print(r["traceback"].rstrip())
    return EXIT_OK


def _dlq_replay(args: argparse.Namespace) -> int:
    from isthmus.config import load_pipeline

    pipeline = load_pipeline(args.pipeline)
    result = pipeline.replay_dead_letters(where=args.where, force=args.force)
    print(json.dumps(result))
    return EXIT_OK if result["failed"] == 0 else EXIT_FAILED


def _add_schema(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("schema", help="print the JSON Schema of a file isthmus reads",
                       description="Print a JSON Schema (draft 2020-12), e.g. for an editor's YAML "
                                   "completion: isthmus schema pipeline > pipeline.schema.json")
    p.add_argument("kind", choices=("pipeline", "webhooks"),
                   help="which file: pipeline (isthmus run's YAML) or webhooks (isthmus webhooks serve's)")
    p.set_defaults(func=_print_schema)


def _print_schema(args: argparse.Namespace) -> int:
    from isthmus.config import pipeline_schema
    from isthmus.webhooks import webhooks_schema

    print(json.dumps(webhooks_schema() if args.kind == "webhooks" else pipeline_schema(), indent=2))
    return EXIT_OK


def _add_state(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("state", help="look after a pipeline's state file",
                       description="A pipeline's state file: checkpoints, dead letters, run history.")
    ssub = p.add_subparsers(dest="state_command", metavar="ACTION", help="what to do")
    ssub.required = True
    bk = ssub.add_parser("backup", help="copy a state file safely, even while a run writes it",
                         description="Copy a state file with SQLite's backup API: a consistent copy even "
                                     "while a run writes it, which `cp` of a WAL database is not.")
    bk.add_argument("state", help="the state .db file")
    bk.add_argument("dest", help="the copy to create (must not exist)")
    bk.set_defaults(func=_state_backup)


def _state_backup(args: argparse.Namespace) -> int:
    from isthmus.store import StateStore

    # A StateError (no such file, damaged, dest exists) is one line from main()'s wrapper.
    store = StateStore(args.state, create=False)
    try:
        store.backup(args.dest)
    finally:
        store.close()
    print(f"backed up {args.state} to {args.dest}")
    return EXIT_OK


def _add_fleet(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state", default="fleet.db", help="the fleet's state file (default fleet.db)")
    common.add_argument("--token-key-env", dest="token_key_env", default="ISTHMUS_TOKEN_KEY",
                        help="environment variable holding the token store's key (default ISTHMUS_TOKEN_KEY)")
    running = argparse.ArgumentParser(add_help=False)
    running.add_argument("--app-limit", type=float, dest="app_limit",
                         help="requests per second the API allows the whole app, shared by every connection")
    running.add_argument("--max-in-flight", type=int, dest="max_in_flight", default=2,
                         help="pages in flight per connection (default 2)")
    p = sub.add_parser("fleet", help="many customers of one integration: connections and their runs",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Connections (one customer each: credentials, config, schedule) of "
                                   "integration definitions, run from one state file. See docs/fleet.md.")
    fsub = p.add_subparsers(dest="fleet_command", metavar="ACTION", help="what to do")
    fsub.required = True
    add = fsub.add_parser("add", parents=[common], help="add a connection", epilog=EPILOG,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    add.add_argument("connection_id", help="the connection's id (letters, digits, '.', '_', '-')")
    add.add_argument("--integration", required=True, help="the pipeline file (YAML) or module:function")
    add.add_argument("--version", default="1", help="the integration's version (default 1)")
    add.add_argument("--config", action="append", default=[], metavar="NAME=VALUE",
                     help="a value for ${config.NAME} (repeatable)")
    add.add_argument("--credential", action="append", default=[], metavar="NAME=ENV_VAR",
                     help="a credential for ${credentials.NAME}, read from the environment variable ENV_VAR "
                          "so that it never shows in the process list (repeatable)")
    add.add_argument("--tag", action="append", default=[], metavar="NAME=VALUE", help="a label (repeatable)")
    add.add_argument("--weight", type=float, default=1.0, help="its share when connections compete (default 1)")
    add.add_argument("--limit", type=float, help="its own cap in requests per second")
    add.add_argument("--schedule", help="'every 15m', 'hourly', 'daily at 02:00' (UTC)")
    add.set_defaults(func=_fleet_add)
    ls = fsub.add_parser("list", parents=[common], help="every connection with its status and counts")
    ls.add_argument("--json", action="store_true", help="print the status as JSON lines")
    ls.set_defaults(func=_fleet_list)
    run = fsub.add_parser("run", parents=[common, running], help="run every due connection once", epilog=EPILOG,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("connection_ids", nargs="*", metavar="ID", help="only these connections")
    run.add_argument("--all", action="store_true", help="also those not due yet (never paused or relink_needed)")
    run.set_defaults(func=_fleet_run)
    serve = fsub.add_parser("serve", parents=[common, running], help="run the schedules until SIGTERM")
    serve.add_argument("--poll", type=float, default=1.0, help="seconds between looks at the schedules")
    serve.set_defaults(func=_fleet_serve)
    for action, helptext in (("pause", "stop scheduling a connection"), ("resume", "schedule it again"),
                             ("remove", "remove a connection and its credentials (its run history stays)")):
        a = fsub.add_parser(action, parents=[common], help=helptext)
        a.add_argument("connection_id", help="the connection's id")
        if action == "pause":
            a.add_argument("--reason", help="why, shown by list")
        a.set_defaults(func=_fleet_manage)
    relink = fsub.add_parser("relink", parents=[common], help="new credentials for a connection")
    relink.add_argument("connection_id", help="the connection's id")
    relink.add_argument("--credential", action="append", default=[], metavar="NAME=ENV_VAR", required=True,
                        help="as for add (repeatable)")
    relink.set_defaults(func=_fleet_manage)


def _pairs(items: List[str], what: str) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--{what} {item.split('=', 1)[0]!r}: expected NAME=VALUE")
        out[name] = value
    return out


def _credentials_from_env(items: List[str]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for name, variable in _pairs(items, "credential").items():
        if variable not in os.environ:
            raise UsageError(f"--credential {name}: environment variable {variable} is not set")
        out[name] = os.environ[variable]
    return out


def _fleet(args: argparse.Namespace) -> Any:
    from isthmus.fleet import Fleet
    from isthmus.limits import RateLimit

    app_limit = getattr(args, "app_limit", None)
    return Fleet(args.state, token_key_env=args.token_key_env,
                 app_limit=RateLimit(app_limit) if app_limit else None,
                 max_in_flight=getattr(args, "max_in_flight", 2))


def _fleet_add(args: argparse.Namespace) -> int:
    from isthmus.fleet import Connection, Integration
    from isthmus.limits import RateLimit

    connection = Connection(args.connection_id, Integration(args.integration, version=args.version),
                            credentials=_credentials_from_env(args.credential), config=_pairs(args.config, "config"),
                            tags=_pairs(args.tag, "tag"), weight=args.weight,
                            limit=RateLimit(args.limit) if args.limit else None, schedule=args.schedule)
    print(_fleet(args).add(connection))
    return EXIT_OK


def _fleet_list(args: argparse.Namespace) -> int:
    # A column with a gap (no reason, no next run) holds NaN: shown as nothing, or as null.
    rows: List[Dict[str, Any]] = [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                                   for k, v in row.items()} for row in _fleet(args).status().to_dict("records")]
    if args.json:
        for row in rows:
            print(json.dumps(row, default=str))
        return EXIT_OK
    print(f"{'connection':<20} {'integration':<16} {'status':<13} {'runs':>5} {'written':>10} {'requests':>9} "
          f"{'429s':>6}  next due (UTC)       reason")
    for r in rows:
        due = "-" if r["next_due"] is None or str(r["next_due"]) == "NaT" else str(r["next_due"])[:19]
        print(f"{r['connection_id']:<20} {r['integration'] + ' v' + r['version']:<16} {r['status']:<13} "
              f"{r['runs']:>5} {r['written']:>10,.0f} {r['requests']:>9,.0f} {r['status_429']:>6,.0f}  {due:<20} "
              f"{(r['reason'] or '')[:80]}")
    print(f"{len(rows)} connection(s)")
    return EXIT_OK


def _fleet_run(args: argparse.Namespace) -> int:
    fleet = _fleet(args)
    signal.signal(signal.SIGTERM, lambda *_: fleet.stop())
    result = fleet.run(args.connection_ids or None, due_only=not args.all)
    for cid, o in sorted(result.outcomes.items()):
        print(f"{cid}: {o['status']} -> {o['connection_status']}" + (f": {o['error']}" if o["error"] else ""))
    print(f"{len(result.outcomes)} connection(s) run, {len(result.failed)} not completed")
    return EXIT_OK if not result.failed else EXIT_FAILED


def _fleet_serve(args: argparse.Namespace) -> int:
    fleet = _fleet(args)
    # SIGTERM or Ctrl-C: every run finishes the pages it holds and checkpoints them, then exit.
    signal.signal(signal.SIGTERM, lambda *_: fleet.stop())
    signal.signal(signal.SIGINT, lambda *_: fleet.stop())
    print(f"isthmus fleet serve: {fleet!r} (SIGTERM stops)", file=sys.stderr, flush=True)
    fleet.serve(poll=args.poll)
    print("isthmus fleet serve: stopped", file=sys.stderr)
    return EXIT_OK


def _fleet_manage(args: argparse.Namespace) -> int:
    fleet = _fleet(args)
    action, cid = args.fleet_command, args.connection_id
    if action == "pause":
        fleet.pause(cid, args.reason)
    elif action == "resume":
        fleet.resume(cid)
    elif action == "remove":
        fleet.remove(cid)
    else:
        fleet.relink(cid, _credentials_from_env(args.credential))
    print(f"connection {cid}: {action} done" if action == "remove" else fleet.get(cid))
    return EXIT_OK


def _add_webhooks(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("webhooks", help="receive webhooks into a durable queue",
                       description="Receive signed webhooks. See docs/webhooks.md.")
    wsub = p.add_subparsers(dest="webhooks_command", metavar="ACTION", help="serve")
    wsub.required = True
    serve = wsub.add_parser("serve", help="serve the receiver of a YAML file until Ctrl-C or SIGTERM",
                            description="Serve the webhook receiver a YAML file describes (isthmus schema "
                                        "webhooks prints its schema) until Ctrl-C or SIGTERM.",
                            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("config", help="the receiver's YAML file")
    serve.set_defaults(func=_webhooks_serve)


def _webhooks_serve(args: argparse.Namespace) -> int:
    from isthmus.webhooks import load_receiver

    rx = load_receiver(args.config)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    rx.start()
    try:
        print(f"isthmus webhooks serving on {rx.url}  (Ctrl-C to stop)")
        for path in rx.routes:
            print(f"  route  {rx.url}{path}")
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
    finally:
        rx.stop()
    s = rx.stats()
    print(f"isthmus webhooks stopped: {s['accepted']} accepted, {s['duplicates']} duplicates, "
          f"{s['requests'] - s['accepted'] - s['duplicates']} refused")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from isthmus import __version__

    parser = argparse.ArgumentParser(prog="isthmus", description="isthmus integration engine",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"isthmus {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", help="what to do")
    sub.required = True
    _add_sandbox(sub)
    _add_run(sub)
    _add_workers(sub)
    _add_dlq(sub)
    _add_schema(sub)
    _add_state(sub)
    _add_fleet(sub)
    _add_webhooks(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text or type(exc).__name__


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = " ".join(c for c in ("isthmus", args.command, getattr(args, "dlq_command", None),
                                        getattr(args, "state_command", None),
                                        getattr(args, "fleet_command", None),
                                        getattr(args, "webhooks_command", None)) if c)
    try:
        result: int = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the wrapper, not at exit
        return result
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader stopped reading (`| head`): what it wanted was printed. Point stdout at
        # /dev/null so the interpreter's last flush does not complain either.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except tuple(cls for cls, _ in EXIT_CODES) as exc:
        code = next(c for cls, c in EXIT_CODES if isinstance(exc, cls))
        shown = _one_line(exc)
        if not isinstance(exc, (errors.ConfigError, UsageError)):
            shown = f"{type(exc).__name__}: {shown}"
        print(f"{command}: {shown}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
