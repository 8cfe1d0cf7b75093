"""The `isthmus` command: argument parsing and `isthmus sandbox` serving until Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import requests

from isthmus.cli import build_parser, main


def test_subcommand_is_required():
    with pytest.raises(SystemExit):
        build_parser().parse_args([])


def test_bad_option_exits_2_with_the_reason(capsys):
    assert main(["sandbox", "--port", "0", "--records", "-5"]) == 2
    assert "records=-5" in capsys.readouterr().err


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
