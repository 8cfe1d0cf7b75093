"""Pipelines from YAML: the schema, the messages a bad file gets, every credential, limits and
retries declared as data, and `isthmus run` / `isthmus dlq ...` on real sandboxes."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import yaml

import isthmus
from conftest import authorization_code_refresh_token
from isthmus import cli, config
from isthmus.config import load_pipeline, pipeline_from_dict, pipeline_schema, validate_pipeline
from isthmus.webhooks import validate_webhooks

ROOT = Path(__file__).resolve().parents[2]
KEY = bytes(range(32)).hex()


def write_pipeline(tmp_path, src_url, dst_url, module="yaml_mapping_a"):
    (tmp_path / f"{module}.py").write_text(textwrap.dedent("""
        def to_ours(r):
            if r["id"].endswith("7"):
                raise ValueError("no email for " + r["id"])
            return {"id": r["id"], "email": r["email"]}
    """))
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent(f"""
        name: contacts
        state: state.db
        source:
          base_url: {src_url}
          path: /v1/contacts
          records: data
          params: {{limit: 100}}
          paginator: {{type: cursor, cursor: meta.next_cursor, param: cursor}}
        map: {module}:to_ours
        sink:
          type: http
          base_url: ${{DEST_URL}}
          path: /v1/contacts/batch
          batch_size: 50
    """))
    return str(path)


def test_run_then_dlq_list_show_replay(tmp_path, capsys, monkeypatch):
    with isthmus.Sandbox(records=300) as src, isthmus.Sandbox() as dst:
        monkeypatch.setenv("DEST_URL", dst.url)
        path = write_pipeline(tmp_path, src.url, dst.url)
        assert cli.main(["run", path, "--no-progress"]) == 0
        out = capsys.readouterr().out
        summary = json.loads(out[out.index("{"):])
        assert (summary["read"], summary["written"], summary["dead_lettered"]) == (300, 270, 30)
        assert dst.stats()["records_received"]["contacts"]["unique"] == 270

        assert cli.main(["dlq", "list", path, "--where", "record_key = 'con_0000000017'"]) == 0
        listing = capsys.readouterr().out
        assert "con_0000000017" in listing and "ValueError: no email for con_0000000017" in listing
        assert "1 dead letter(s)" in listing
        dl_id = int(listing.splitlines()[1].split()[0])
        assert cli.main(["dlq", "show", str(tmp_path / "state.db"), str(dl_id)]) == 0
        assert '"id": "con_0000000017"' in capsys.readouterr().out

        # Still failing: replay counts an attempt and exits 1.
        assert cli.main(["dlq", "replay", path, "--where", "record_key = 'con_0000000017'"]) == 1
        capsys.readouterr()
        assert load_pipeline(path).dead_letters().set_index("record_key").loc["con_0000000017", "attempts"] == 2


def test_config_errors_name_the_field(tmp_path, monkeypatch):
    monkeypatch.delenv("DEST_URL", raising=False)
    path = write_pipeline(tmp_path, "http://127.0.0.1:1", "x", module="yaml_mapping_b")
    with pytest.raises(isthmus.ConfigError, match=r"sink.base_url: environment variable DEST_URL is not set"):
        load_pipeline(path)
    monkeypatch.setenv("DEST_URL", "http://127.0.0.1:1")
    yaml_file = tmp_path / "pipeline.yaml"
    yaml_file.write_text(yaml_file.read_text().replace("type: cursor", "type: cursr"))
    with pytest.raises(isthmus.ConfigError,
                       match=r"source.paginator.type: 'cursr' is not valid.*did you mean cursor\?"):
        load_pipeline(path)
    assert cli.main(["run", path]) == 2


def test_time_slices_and_retry_from_config(tmp_path):
    with isthmus.Sandbox(records=200) as src, isthmus.Sandbox() as dst:
        doc = {
            "name": "sliced", "state": "state.db",
            "source": {"base_url": src.url, "path": "/v1/contacts", "params": {"limit": 30},
                       "paginator": {"type": "cursor"}, "concurrency": 3,
                       "partitions": {"time_slices": {"start": "2024-01-01", "end": "2025-01-01",
                                                      "every": 86400 * 60}},
                       "retry": {"attempts": 4, "base": 0.05}},
            "sink": {"type": "http", "base_url": dst.url, "path": "/v1/contacts/batch", "retry": 3},
        }
        pipe = pipeline_from_dict(doc, tmp_path)
        assert len(pipe.source.partitions) == 7 and pipe.source.retry.attempts == 4
        assert pipe.sink.retry.attempts == 3
        run = pipe.run()
        assert run.counts["read"] == 200 and dst.stats()["records_received"]["contacts"]["unique"] == 200
        doc["source"]["partitions"] = {"slices": {}}
        with pytest.raises(isthmus.ConfigError, match=r"source.partitions.slices: unknown key"):
            pipeline_from_dict(doc, tmp_path)


# ---- what a bad file is told -----------------------------------------------------------------

def base_doc(**source):
    return {"source": {"base_url": "http://127.0.0.1:1", "path": "/v1/contacts", **source},
            "sink": {"type": "jsonl", "path": "out.jsonl"}}


def with_sink(**sink):
    doc = base_doc()
    doc["sink"] = {"type": "http", "base_url": "http://127.0.0.1:1", "path": "/in", **sink}
    return doc


@pytest.mark.parametrize("doc, message", [
    (base_doc(pagintor={"type": "cursor"}), "source.pagintor: unknown key; did you mean paginator?"),
    ({**base_doc(), "chekpoint_every": 5}, "chekpoint_every: unknown key; did you mean checkpoint_every?"),
    (base_doc(retry={"atempts": 3}), "source.retry.atempts: unknown key; did you mean attempts?"),
    (base_doc(auth={"type": "basic", "user": "u", "password": "p", "realm": "x"}),
     "source.auth.realm: unknown key; expected one of password, type, user"),
    (base_doc(rate_limit=[{"rate": 10}, {"type": "quota", "n": 5, "pre": "day"}]),
     "source.rate_limit[1].pre: unknown key; did you mean per?"),
    (base_doc(client={"timout": 5}), "source.client.timout: unknown key; did you mean timeout?"),
    (with_sink(batch_size="lots"), "sink.batch_size: expected an integer, got 'lots'"),
    (with_sink(batch_size=0), "sink.batch_size: expected a number >= 1, got 0"),
    (base_doc(retry="many"), "source.retry: expected an integer or a mapping, got 'many'"),
    (base_doc(paginator="cursr"), "source.paginator: expected one of cursor, offset, page, link, next_url "
                                  "or a mapping, got 'cursr'; did you mean cursor?"),
    (base_doc(auth={"type": "oauth2", "token_url": "x"}),
     "source.auth.type: 'oauth2' is not valid; expected one of api_key, basic, bearer, "
     "oauth2_client_credentials, oauth2_refresh_token, oauth2_authorization_code, jwt_bearer, hmac, aws_sigv4"),
    (base_doc(auth={"type": "bearer"}), "source.auth.token: missing"),
    ({"source": {"path": "/x"}, "sink": {"type": "jsonl", "path": "o"}}, "source.base_url: missing"),
    ({"source": {"base_url": "http://h", "path": "/x"}}, "sink: missing"),
    ({**base_doc(), "map": "no_colon"}, "map: 'no_colon' is not valid; expected 'module:function'"),
    ([1, 2], "pipeline: expected a mapping, got [1, 2]"),
    (with_sink(base_url="htp://127.0.0.1:1"), "sink.base_url: 'htp://127.0.0.1:1' must start with http:// or https://"),
])
def test_a_bad_file_gets_one_line_naming_the_path(doc, message, tmp_path):
    with pytest.raises(isthmus.ConfigError) as info:
        pipeline_from_dict(doc, tmp_path)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("source: {base_url: http://h, path: /x\nsink: [type: jsonl\n")
    assert cli.main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"isthmus run: pipeline file \S+broken.yaml is not valid YAML at line 2, column \d+: .+\n", err)


def test_secrets_never_appear_in_errors_or_reprs(tmp_path, monkeypatch, capsys):
    secret = "s3cr3t-value-0042"
    # A secret written in the file with the wrong type: the message names the field only.
    with pytest.raises(isthmus.ConfigError) as info:
        pipeline_from_dict(base_doc(auth={"type": "basic", "user": "u", "password": 30031942}), tmp_path)
    assert "source.auth.password: expected a string, got a number (not shown: a secret)" in str(info.value)
    assert "30031942" not in str(info.value)
    # A secret from the environment, refused by the API: neither the error nor any repr shows it.
    monkeypatch.setenv("CRM_TOKEN", secret)
    with isthmus.Sandbox(auth="bearer", records=10) as api:
        doc = base_doc(auth={"type": "bearer", "token": "${CRM_TOKEN}"})
        doc["source"]["base_url"] = api.url
        doc["state"] = "state.db"
        pipe = pipeline_from_dict(doc, tmp_path)
        assert secret not in repr(pipe.source.client.auth) and secret not in repr(pipe.source)
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump(doc))
        assert cli.main(["run", str(path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "401 Unauthorized" in err and secret not in err and len(err.splitlines()) == 1


# ---- every credential, limits and retries from YAML, against real sandboxes -----------------

def run_yaml(tmp_path, api, source_extra, name="p"):
    doc = {"name": name, "state": "state.db",
           "source": {"base_url": api.url, "path": "/v1/contacts", "params": {"limit": 20},
                      "paginator": "cursor", **source_extra},
           "sink": {"type": "jsonl", "path": f"{name}.jsonl"}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    pipe = load_pipeline(str(path))
    return pipe, pipe.run()


@pytest.mark.parametrize("sandbox_options, auth, env", [
    ({"auth": "api_key"}, {"type": "api_key", "value": "${K}", "header": "X-API-Key"}, {"K": "sandbox-api-key"}),
    ({"auth": "api_key", "api_key_in": "query"}, {"type": "api_key", "value": "${K}", "query": "api_key"},
     {"K": "sandbox-api-key"}),
    ({"auth": "basic"}, {"type": "basic", "user": "sandbox-user", "password": "${P}"}, {"P": "sandbox-password"}),
    ({"auth": "bearer"}, {"type": "bearer", "token": "${T}"}, {"T": "sandbox-static-token"}),
    ({"auth": "oauth2"}, {"type": "oauth2_client_credentials", "token_url": "{api}/oauth/token",
                          "client_id": "sandbox-client", "client_secret": "${S}"}, {"S": "sandbox-secret"}),
    ({"auth": "oauth2"}, {"type": "oauth2_client_credentials", "token_url": "{api}/oauth/token",
                          "client_id": "sandbox-client", "client_secret": "${S}",
                          "auth_method": "client_secret_post", "scopes": "contacts:read"}, {"S": "sandbox-secret"}),
    ({"signing_secret": "whsk-1"}, {"type": "hmac", "key": "${H}", "header": "X-Signature", "prefix": "sha256=",
                                    "canonical": "{timestamp}.{method}.{path_query}.{body}",
                                    "timestamp_header": "X-Signature-Timestamp"}, {"H": "whsk-1"}),
], ids=["api_key-header", "api_key-query", "basic", "bearer", "oauth2-basic", "oauth2-post", "hmac"])
def test_each_credential_from_yaml_runs_a_pipeline(sandbox_options, auth, env, tmp_path, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with isthmus.Sandbox(records=60, **sandbox_options) as api:
        auth = {k: v.replace("{api}", api.url) if isinstance(v, str) else v for k, v in auth.items()}
        pipe, run = run_yaml(tmp_path, api, {"auth": auth})
        assert run.counts["read"] == 60 and run.status == "completed"
        assert "401" not in api.stats()["requests"]["by_status"]
        for secret in env.values():
            assert secret not in repr(pipe.source.client.auth)


def test_refresh_token_with_a_sqlite_token_store_from_yaml(tmp_path, monkeypatch):
    monkeypatch.setenv("ISTHMUS_TOKEN_KEY", KEY)
    with isthmus.Sandbox(auth="oauth2", rotate_refresh_tokens=True, records=40) as api:
        monkeypatch.setenv("RT", authorization_code_refresh_token(api))
        auth = {"type": "oauth2_refresh_token", "token_url": api.token_url, "client_id": api.client_id,
                "client_secret": "${CS}", "refresh_token": "${RT}", "store": {"type": "sqlite", "path": "tokens.db"}}
        monkeypatch.setenv("CS", api.client_secret)
        _, first = run_yaml(tmp_path, api, {"auth": auth}, name="a")
        # A second run (a new process would do the same) takes its token from the store.
        _, second = run_yaml(tmp_path, api, {"auth": auth}, name="b")
        assert first.counts["read"] == second.counts["read"] == 40
        assert api.stats()["tokens"]["by_grant"]["refresh_token"] == 1
        assert (tmp_path / "tokens.db").is_file()


def test_authorization_code_resumes_from_the_token_store_from_yaml(tmp_path, monkeypatch):
    import requests
    monkeypatch.setenv("ISTHMUS_TOKEN_KEY", KEY)
    with isthmus.Sandbox(auth="oauth2", records=30) as api:
        flow = isthmus.OAuth2AuthorizationCode(api.authorize_url, api.token_url, api.client_id,
                                               store=isthmus.TokenStore.sqlite(tmp_path / "tokens.db"))
        requests.get(flow.start())  # the sandbox approves at once and redirects to the listener
        flow.wait(timeout=10)
        auth = {"type": "oauth2_authorization_code", "authorize_url": api.authorize_url,
                "token_url": api.token_url, "client_id": api.client_id,
                "store": {"type": "sqlite", "path": "tokens.db"}}
        _, run = run_yaml(tmp_path, api, {"auth": auth})
        assert run.counts["read"] == 30


def test_jwt_bearer_from_yaml_sends_the_grant(tmp_path, monkeypatch, capsys):
    # The sandbox has no JWT grant: its refusal proves the assertion grant was sent.
    monkeypatch.setenv("JWT_SECRET", "a-shared-secret-of-at-least-32-bytes!")
    with isthmus.Sandbox(auth="oauth2", records=10) as api:
        doc = base_doc(auth={"type": "jwt_bearer", "token_url": api.token_url, "issuer": "me",
                             "secret": "${JWT_SECRET}", "lifetime": 120})
        doc["source"]["base_url"] = api.url
        doc["state"] = "state.db"
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump(doc))
        pipe = load_pipeline(str(path))
        assert isinstance(pipe.source.client.auth, isthmus.JWTBearer) and pipe.source.client.auth.algorithm == "HS256"
        assert cli.main(["run", str(path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "TokenError" in err and "unsupported_grant_type" in err and "at-least-32" not in err


def test_aws_sigv4_from_yaml_signs_like_the_python_credential(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SK", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    with isthmus.Sandbox(records=20) as api:
        auth = {"type": "aws_sigv4", "access_key": "AKIDEXAMPLE", "secret_key": "${AWS_SK}",
                "region": "eu-west-1", "service": "execute-api"}
        pipe, run = run_yaml(tmp_path, api, {"auth": auth})
        assert run.counts["read"] == 20
    ours = pipe.source.client.auth.sign("GET", "https://example.amazonaws.com/a", timestamp=1700000000)
    direct = isthmus.AwsSigV4("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "eu-west-1",
                              "execute-api").sign("GET", "https://example.amazonaws.com/a", timestamp=1700000000)
    assert ours == direct and "EXAMPLEKEY" not in repr(pipe.source.client.auth)


def test_rate_limits_retries_and_client_options_from_yaml(tmp_path):
    with isthmus.Sandbox(records=200, rate_limit=40, burst=2) as api, isthmus.Sandbox() as dst:
        doc = {"name": "limited", "state": "state.db",
               "source": {"base_url": api.url, "path": "/v1/contacts", "params": {"limit": 20}, "paginator": "cursor",
                          "rate_limit": [{"rate": 25, "per": "second", "burst": 2},
                                         {"type": "quota", "n": 100000, "per": "day"}, {"type": "concurrency", "n": 2}],
                          "retry": {"attempts": 5, "base": 0.05, "cap": 1, "retry_on": [429, 503, "connection"],
                                    "circuit_breaker": {"min_calls": 50}},
                          "client": {"timeout": 15, "connect_timeout": 3, "headers": {"X-Team": "data"}}},
               "sink": {"type": "http", "base_url": dst.url, "path": "/v1/contacts/batch", "batch_size": 40,
                        "rate_limit": {"type": "limiter", "limits": [{"type": "adaptive", "min": 1, "max": 100}],
                                       "costs": {"POST /v1/contacts/batch": 2}, "max_wait": 60},
                        "retry": 4, "client": {"timeout": 20}}}
        pipe = pipeline_from_dict(doc, tmp_path)
        src = pipe.source.client
        assert [type(r).__name__ for r in src.limiter.limits] == ["RateLimit", "Quota", "Concurrency"]
        assert src.timeout == 15 and src.headers["X-Team"] == "data"
        assert pipe.source.retry.statuses == (429, 503) and pipe.source.retry.on_connection
        assert pipe.sink.client.limiter.costs == {"POST /v1/contacts/batch": 2.0}
        run = pipe.run()
        assert run.counts["written"] == 200
        # Paced below the API's limit: not one request was refused.
        assert api.stats()["requests"]["by_status"].get("429", 0) == 0


def test_rate_limit_shares_from_yaml(tmp_path):
    doc = base_doc(rate_limit={"rate": 100, "shares": {"acme": {"weight": 2, "rate": 10, "concurrency": 4},
                                                       "big": {"weight": 0.5}}})
    limiter = pipeline_from_dict(doc, tmp_path).source.client.limiter
    assert isinstance(limiter, isthmus.Limiter) and limiter.divided
    assert limiter.shares()["acme"]["weight"] == 2.0 and limiter.shares()["big"]["weight"] == 0.5
    assert [type(r).__name__ for r in limiter.limits] == ["RateLimit"]
    # On a list of limits, and on a limiter, the same.
    doc = base_doc(rate_limit=[{"rate": 100, "shares": {"acme": {"weight": 3}}}, {"type": "concurrency", "n": 8}])
    limiter = pipeline_from_dict(doc, tmp_path).source.client.limiter
    assert limiter.shares()["acme"]["weight"] == 3.0 and len(limiter.limits) == 2
    doc = base_doc(rate_limit={"type": "limiter", "limits": [{"rate": 100}], "shares": {"acme": {"weight": 4}}})
    assert pipeline_from_dict(doc, tmp_path).source.client.limiter.shares()["acme"]["weight"] == 4.0


@pytest.mark.parametrize("shares, message", [
    ({"acme": {"weight": 0}}, "source.rate_limit.shares.acme.weight"),
    ({"acme": {"weight": "heavy"}}, "source.rate_limit.shares.acme.weight"),
    ({"acme": {"wieght": 2}}, "source.rate_limit.shares.acme.wieght: unknown key"),
    ({"acme": {"quota": 5}}, "source.rate_limit.shares.acme.quota: unknown key"),
    ({"acme": {"burst": 5}}, "source.rate_limit.shares.acme"),
])
def test_bad_shares_in_a_file_name_the_tenant_and_the_field(shares, message, tmp_path):
    with pytest.raises(isthmus.ConfigError) as info:
        pipeline_from_dict(base_doc(rate_limit={"rate": 100, "shares": shares}), tmp_path)
    assert str(info.value).startswith(message), str(info.value)


# ---- the schema ---------------------------------------------------------------------------------

def test_the_schema_is_draft_2020_12_and_every_object_is_closed():
    import jsonschema
    schema = pipeline_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    for name, d in schema["$defs"].items():
        if d.get("properties") and "allOf" not in d:
            assert d.get("additionalProperties") is False, name


def test_the_schema_and_the_loader_agree():
    """Every schema key reaches a factory parameter, and every parameter has a schema key
    (or is listed as built by the loader or Python-only)."""
    defs = pipeline_schema()["$defs"]
    assert set(config.FACTORIES) <= set(defs)
    for name in config.FACTORIES:
        renamed = config.RENAMED.get(name, {})
        shape = next((b for b in defs[name].get("anyOf", []) if "properties" in b), defs[name])
        keys = {renamed.get(k, k) for k in shape.get("properties", {})}
        keys -= {"type"} | config.ROUTED.get(name, frozenset())
        params = set(config.factory_parameters(name)) - config.NOT_IN_SCHEMA.get(name, frozenset())
        assert keys == params, (name, keys ^ params)
    # Every `type:` a tagged object offers builds something.
    for name, d in defs.items():
        for branch in d.get("allOf", []):
            target = branch["then"]["$ref"].rsplit("/", 1)[1]
            assert target in config.FACTORIES, (name, target)


def yaml_examples():
    out = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.S)):
            out.append(pytest.param(block, id=f"{doc.name}-{i}"))
    out.append(pytest.param(config.__doc__.split("::", 1)[1].split("\n\n")[1], id="config-docstring"))
    return out


@pytest.mark.parametrize("block", yaml_examples())
def test_every_yaml_example_in_the_docs_validates(block):
    doc = yaml.safe_load(textwrap.dedent(block))
    if isinstance(doc, dict) and "routes" in doc:  # an `isthmus webhooks serve` file
        validate_webhooks(doc)
    else:
        validate_pipeline(doc)


def test_isthmus_schema_pipeline_prints_the_schema(capsys):
    assert cli.main(["schema", "pipeline"]) == 0
    assert json.loads(capsys.readouterr().out) == pipeline_schema()


def test_the_schema_ships_inside_the_package():
    # Run against an installed wheel, this finds the file where pip put the package.
    assert config.SCHEMA_PATH.is_file()
    assert config.SCHEMA_PATH.resolve().is_relative_to(Path(isthmus.__file__).resolve().parent)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^dependencies = \[.*"jsonschema>=[\d.]+"', pyproject, re.M)
