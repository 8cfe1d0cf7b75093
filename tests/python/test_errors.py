"""The error hierarchy: users catch by meaning or by the builtin they already know."""

import builtins

import pytest

from isthmus import errors


@pytest.mark.parametrize("cls,builtin", [
    (errors.ConfigError, ValueError),
    (errors.InvalidURL, ValueError),
    (errors.UnsupportedScheme, ValueError),
    (errors.InvalidHeader, ValueError),
    (errors.ConnectError, ConnectionError),
    (errors.ResolveError, ConnectionError),
    (errors.ReadError, ConnectionError),
    (errors.TimeoutError, builtins.TimeoutError),
    (errors.JSONDecodeError, ValueError),
    (errors.ClientClosed, RuntimeError),
])
def test_classes_subclass_builtins(cls, builtin):
    assert issubclass(cls, builtin)
    assert issubclass(cls, errors.IsthmusError)


def test_request_errors_carry_method_and_url():
    e = errors.ConnectError("refused", method="GET", url="http://127.0.0.1:1/")
    assert (e.method, e.url, str(e)) == ("GET", "http://127.0.0.1:1/", "refused")


@pytest.mark.parametrize("value,expected", [
    ("120", 120.0),
    ("0", 0.0),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 10.0),
    ("soon", None),
    (None, None),
    ("-5", None),
])
def test_parse_retry_after(value, expected):
    import email.utils
    now = email.utils.parsedate_to_datetime("Wed, 21 Oct 2015 07:27:50 GMT").timestamp()
    assert errors.parse_retry_after(value, now=now) == expected


def test_json_decode_error_is_also_the_stdlib_one():
    import json
    import pickle

    assert issubclass(errors.JSONDecodeError, json.JSONDecodeError)
    assert issubclass(errors.JSONDecodeError, errors.DecodingError)
    doc = '{"a": 1,\n  "b": ]'
    with pytest.raises(json.JSONDecodeError) as stdlib:
        json.loads(doc)
    e = errors.JSONDecodeError("invalid JSON in the response to GET http://h/x", method="GET",
                               url="http://h/x", excerpt=doc, position=stdlib.value.pos,
                               msg="Expecting value", doc=doc)
    assert (e.msg, e.doc, e.pos, e.lineno, e.colno) == \
        (stdlib.value.msg, doc, stdlib.value.pos, stdlib.value.lineno, stdlib.value.colno)
    assert str(e) == "invalid JSON in the response to GET http://h/x"
    copy = pickle.loads(pickle.dumps(e))
    assert type(copy) is errors.JSONDecodeError
    assert (str(copy), copy.method, copy.url, copy.msg, copy.pos, copy.lineno, copy.colno) == \
        (str(e), "GET", "http://h/x", e.msg, e.pos, e.lineno, e.colno)
