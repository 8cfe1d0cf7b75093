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
