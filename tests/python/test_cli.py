"""The `isthmus` command: parsing, help, exit codes, one-line errors, Ctrl-C, closed pipes, and
`isthmus sandbox` serving until Ctrl-C."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest
import requests
import yaml

import isthmus
from conftest import wait_until
from isthmus.cli import EPILOG, build_parser, main


def isthmus_cmd(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "isthmus.cli", *args], capture_output=True, text=True,
                          timeout=60, **kwargs)


def pipeline_file(tmp_path, source, sink=None, **top):
    doc = {"name": "contacts", "state": "state.db", "source": source,
           "sink": sink or {"type": "jsonl", "path": "out.jsonl"}, **top}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_subcommand_is_required():
    with pytest.raises(SystemExit):
        build_parser().parse_args([])


def test_bad_option_exits_2_with_the_reason(capsys):
    assert main(["sandbox", "--port", "0", "--records", "-5"]) == 2
    assert "records=-5" in capsys.readouterr().err


def test_every_flag_and_positional_has_help():
    def walk(parser, where):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{where} {name}")
            if not isinstance(action, argparse._HelpAction):
                yield f"{where} {action.dest}", action.help
    seen = dict(walk(build_parser(), "isthmus"))
    assert len(seen) > 30
    assert [where for where, text in seen.items() if not text or not text.strip()] == []


def test_version_and_exit_codes_in_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"isthmus {isthmus.__version__}"
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert EPILOG in out and "--fail-on-dead-letters" in out
    assert re.findall(r"^  (\d+) +\S", EPILOG, re.M) == ["0", "1", "2", "3", "130"]


@pytest.mark.parametrize("base_url, code, expected", [
    ("http://127.0.0.1:{closed}", 1, "ConnectError: "),
    ("http://no-such-host.invalid", 1, "ResolveError: Could not resolve host: no-such-host.invalid"),
    ("htp://127.0.0.1:1", 2, "source.base_url: 'htp://127.0.0.1:1' must start with http:// or https://"),
], ids=["refused", "dns", "scheme"])
def test_run_errors_are_one_line_without_traceback(base_url, code, expected, tmp_path, closed_port):
    path = pipeline_file(tmp_path, {"base_url": base_url.format(closed=closed_port), "path": "/v1/contacts",
                                    "retry": 1})
    done = isthmus_cmd("run", path, "--no-progress")
    assert done.returncode == code
    assert done.stderr.startswith("isthmus run: ") and expected in done.stderr
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr


def test_a_damaged_state_file_is_one_line_naming_it(tmp_path):
    (tmp_path / "state.db").write_bytes(b"not a database" + os.urandom(4096))
    path = pipeline_file(tmp_path, {"base_url": "http://127.0.0.1:1", "path": "/v1/contacts"})
    for args in (["run", path, "--no-progress"], ["dlq", "list", path],
                 ["dlq", "show", str(tmp_path / "state.db"), "1"]):
        done = isthmus_cmd(*args)
        assert done.returncode == 1, args
        assert "StateError: state file" in done.stderr and "state.db" in done.stderr
        assert len(done.stderr.splitlines()) == 1


def test_dlq_of_a_missing_state_file_says_so_and_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "missing.db"
    assert main(["dlq", "list", str(missing)]) == 2
    assert capsys.readouterr().err == f"isthmus dlq list: state file {missing} does not exist\n"
    assert not missing.exists()


def failing_pipeline(tmp_path, api, records_fail=True):
    (tmp_path / "cli_maps.py").write_text(textwrap.dedent("""
        def refuse(r):
            raise ValueError("refused " + r["id"])
        def keep_most(r):
            if r["id"].endswith("3"):
                raise ValueError("no email")
            return r
    """))
    return pipeline_file(tmp_path, {"base_url": api.url, "path": "/v1/contacts", "params": {"limit": 100},
                                    "paginator": "cursor"},
                         {"type": "http", "base_url": "${DEST_URL}", "path": "/v1/contacts/batch"},
                         map="cli_maps:refuse" if records_fail else "cli_maps:keep_most",
                         # Every record failing would otherwise stop the run on purpose.
                         **({"stop_after_failures": 0} if records_fail else {}))


def ran_failing_pipeline(tmp_path, monkeypatch, records):
    """A pipeline file whose run dead-lettered every record (the sandboxes are gone after)."""
    with isthmus.Sandbox(records=records) as api, isthmus.Sandbox() as dst:
        monkeypatch.setenv("DEST_URL", dst.url)
        path = failing_pipeline(tmp_path, api)
        assert main(["run", path, "--no-progress"]) == 0
    return path


def test_dlq_list_needs_no_credentials_of_the_sink(tmp_path, monkeypatch, capsys):
    with isthmus.Sandbox(records=50) as api, isthmus.Sandbox() as dst:
        monkeypatch.setenv("DEST_URL", dst.url)
        path = failing_pipeline(tmp_path, api, records_fail=False)
        assert main(["run", path, "--no-progress"]) == 0
    monkeypatch.delenv("DEST_URL")
    capsys.readouterr()
    assert main(["dlq", "list", path]) == 0
    assert "5 dead letter(s)" in capsys.readouterr().out
    # Replay sends to the sink, so it does need the variable, and says which one.
    assert main(["dlq", "replay", path]) == 2
    assert "sink.base_url: environment variable DEST_URL is not set" in capsys.readouterr().err


def test_fail_on_dead_letters_exits_3(tmp_path, monkeypatch, capsys):
    with isthmus.Sandbox(records=50) as api, isthmus.Sandbox() as dst:
        monkeypatch.setenv("DEST_URL", dst.url)
        path = failing_pipeline(tmp_path, api, records_fail=False)
        assert main(["run", path, "--no-progress", "--fail-on-dead-letters"]) == 3
        assert main(["run", path, "--no-progress"]) == 0  # dead letters alone are not a failure
    capsys.readouterr()


def test_bad_where_sql_is_a_usage_error(tmp_path, monkeypatch, capsys):
    path = ran_failing_pipeline(tmp_path, monkeypatch, 10)
    capsys.readouterr()
    assert main(["dlq", "list", path, "--where", "colour = 'red'"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("isthmus dlq list: where: \"colour = 'red'\" is not a valid condition")
    assert "no such column: colour" in err and err.count("\n") == 1


def test_a_closed_pipe_ends_dlq_list_quietly(tmp_path, monkeypatch, capsys):
    # 2,000 lines are more than a pipe holds, so the writer meets the closed end.
    ran_failing_pipeline(tmp_path, monkeypatch, 2000)
    capsys.readouterr()
    proc = subprocess.Popen([sys.executable, "-m", "isthmus.cli", "dlq", "list", str(tmp_path / "state.db")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "id" in proc.stdout.readline()  # what `head -1` reads
    proc.stdout.close()
    assert proc.wait(timeout=60) == 0
    assert proc.stderr.read() == ""
    proc.stderr.close()


def test_ctrl_c_during_a_run_exits_130_with_one_line(tmp_path):
    with isthmus.Sandbox(records=100_000, rate_limit=20, burst=1) as api:
        path = pipeline_file(tmp_path, {"base_url": api.url, "path": "/v1/contacts", "params": {"limit": 10},
                                        "paginator": "cursor", "rate_limit": {"rate": 20, "burst": 1}})
        proc = subprocess.Popen([sys.executable, "-m", "isthmus.cli", "run", path, "--no-progress"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: api.stats()["records_served"].get("contacts", 0) >= 30, timeout=30)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 130
    assert err == "isthmus run: interrupted\n"


def test_cli_parser_and_serving():
    args = build_parser().parse_args(["sandbox", "--port", "0", "--records", "5", "--auth", "oauth2"])
    assert args.records == 5 and args.auth == "oauth2"
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from isthmus.cli import main; sys.exit(main())",
                             "sandbox", "--port", "0", "--auth", "oauth2", "--records", "5"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving on http://127.0.0.1:" in line
        url = line.split()[4]
        out = []
        for _ in range(12):
            out.append(proc.stdout.readline())
            if "stats" in out[-1]:
                break
        assert any("client_secret" in o for o in out)
        assert requests.get(url + "/json").status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        proc.stdout.close()


def test_cli_sandbox_with_tenants_prints_each_tenants_credentials_and_they_work():
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from isthmus.cli import main; sys.exit(main())",
                             "sandbox", "--port", "0", "--auth", "api_key", "--records", "5", "--tenants", "2",
                             "--app-rate-limit", "50", "--app-burst", "10"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving on http://127.0.0.1:" in line
        url = line.split()[4]
        out = []
        while "stats" not in (out[-1] if out else ""):
            out.append(proc.stdout.readline())
        text = "".join(out)
        assert "tenant 0" in text and "tenant 1" in text and "app limit      50.0/s burst 10" in text
        keys = [o.split()[1] for o in out if o.strip().startswith("api_key ")]
        assert len(keys) == 2 and keys[0] != keys[1]
        for key in keys:
            assert requests.get(url + "/v1/contacts", headers={"X-API-Key": key}).status_code == 200
        assert requests.get(url + "/v1/contacts").status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        proc.stdout.close()
