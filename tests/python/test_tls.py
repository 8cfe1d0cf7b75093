"""TLS against a real server: nginx on loopback with a certificate from a throwaway CA."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest

import isthmus

pytestmark = pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is installed by make test")


def _run(*args: str, cwd) -> None:
    subprocess.run(args, cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _run("openssl", "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
         "-subj", "/CN=isthmus test CA", cwd=d)
    _run("openssl", "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    _run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    (d / "www").mkdir()
    (d / "www" / "doc.json").write_text('{"tls": true}')
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    # As root, nginx's workers would drop to a user who cannot read pytest's private tmp dir.
    user = "user root;" if os.geteuid() == 0 else ""
    (d / "nginx.conf").write_text(f"""
{user}
daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  server {{
    listen 127.0.0.1:{port} ssl http2;
    ssl_certificate {d}/server.pem; ssl_certificate_key {d}/server.key;
    root {d}/www;
    default_type application/json;
  }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", str(d / "nginx.conf"), "-p", str(d)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("nginx did not start: " + (d / "error.log").read_text())
            time.sleep(0.02)
    yield f"https://127.0.0.1:{port}", str(d / "ca.pem")
    proc.terminate()
    proc.wait(timeout=10)


def test_unknown_ca_is_refused_by_default(tls_server):
    url, _ = tls_server
    with isthmus.Client(url) as c:
        with pytest.raises(isthmus.TLSError) as info:
            c.get("/doc.json")
    assert isinstance(info.value, ConnectionError)


def test_ca_bundle_is_accepted_and_http2_negotiated(tls_server):
    url, ca = tls_server
    with isthmus.Client(url, verify=ca) as c:
        r = c.get("/doc.json")
        assert r.json() == {"tls": True}
        assert r.http_version == "HTTP/2"
        rs = c.get_many(["/doc.json"] * 200, concurrency=16)
        assert all(x.status_code == 200 for x in rs)


def test_http2_can_be_turned_off(tls_server):
    url, ca = tls_server
    with isthmus.Client(url, verify=ca, http2=False) as c:
        assert c.get("/doc.json").http_version == "HTTP/1.1"


def test_verification_can_be_turned_off(tls_server):
    url, _ = tls_server
    with isthmus.Client(url, verify=False) as c:
        assert c.get("/doc.json").status_code == 200
