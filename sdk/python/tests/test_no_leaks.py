"""A secret value passed in never appears in a repr, an exception, a log line or the output,
whatever happens to the call (success, conflict, validation error, no server)."""

from __future__ import annotations

import logging
import traceback
from typing import Callable, List

import pytest

import runta
from conftest import TenantInfo, fake_value
from runta import _operations as ops
from server import RuntaServer


def texts_of(err: BaseException) -> str:
    return "\n".join(
        [str(err), repr(err), "".join(traceback.format_exception(type(err), err, err.__traceback__))]
    )


def test_value_never_in_repr_errors_logs_or_output(
    server: RuntaServer,
    tenant: TenantInfo,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: runta, httpx, httpcore
    value = fake_value("leakcheck")
    bad_value = value + "\n"  # refused: control character
    seen: List[str] = []

    with runta.Runta(server.url, tenant.api_key) as client:
        secret = client.secrets.create("leak", value)
        seen += [repr(secret), str(secret), repr(client), repr(client.secrets), repr(client.runtime("w"))]
        seen.append(repr(ops.create_secret("leak", value, None, None)))
        seen.append(repr(client.secrets.update("leak", value=value + "2")))

        calls: List[Callable[[], object]] = [
            lambda: client.secrets.create("leak", value),  # 409
            lambda: client.secrets.create("leak-2", bad_value),  # 400 naming the field
            lambda: client.secrets.update("leak", value=bad_value),
            lambda: client.secrets.update("missing", value=value),  # 404
        ]
        for call in calls:
            with pytest.raises(runta.RuntaError) as caught:
                call()
            seen.append(texts_of(caught.value))

    with runta.Runta("http://127.0.0.1:9", tenant.api_key, max_retries=0) as nowhere:
        with pytest.raises(runta.APIConnectionError) as caught:
            nowhere.secrets.create("leak", value)
        seen.append(texts_of(caught.value))
        assert caught.value.__cause__ is None and caught.value.__context__ is None

    out, err = capfd.readouterr()
    seen += [out, err, "\n".join(r.getMessage() for r in caplog.records), caplog.text]
    assert any("POST /v1/secrets" in r.getMessage() for r in caplog.records)  # logging did happen
    for text in seen:
        assert value not in text
        assert tenant.api_key not in text
    # The server's own promise: its log never holds a value either.
    assert value not in server.log_text()


def test_unsendable_keys_and_values_are_never_quoted(server: RuntaServer, tenant: TenantInfo) -> None:
    """A key that cannot go into a header is refused before an HTTP library could quote it; a
    value that is not valid Unicode (a lone surrogate) is escaped, refused by the server, and
    never shows up either."""
    bad_key = "runta_ak_not-sendable\nsecond-line"
    with runta.Runta(server.url, bad_key) as client:
        with pytest.raises(runta.AuthenticationError) as refused:
            client.secrets.list()
    assert refused.value.code == "invalid_credential" and refused.value.status is None
    assert "not-sendable" not in texts_of(refused.value)

    value = "sk-test-not-real-surrogate-\ud800"
    with runta.Runta(server.url, tenant.api_key) as client:
        with pytest.raises(runta.InvalidRequestError) as invalid:
            client.secrets.create("surrogate", value)
    assert invalid.value.status == 400
    assert "surrogate-" not in texts_of(invalid.value)
