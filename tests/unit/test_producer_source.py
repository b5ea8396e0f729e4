from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pg8000.exceptions
import pytest

from pacs_sync.errors import ErrorCode
from producer.errors import LsnOutOfRangeError, SchemaMismatchError, SourceUnavailableError
from producer.settings import ProducerSettings
from producer.source import CdcSource, odbc_connection_string

MS_DRIVER = "ODBC Driver 18 for SQL Server"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("PACS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env file


def settings(**overrides: Any) -> ProducerSettings:
    values: dict[str, Any] = {
        "db_driver": "pyodbc",
        "db_host": "pacs-sql.benton.local",
        "db_port": 1433,
        "db_name": "PACS_Benton",
        "db_user": "tf_sync",
        "db_password": "s3cret",
    }
    values.update(overrides)
    return ProducerSettings(**values)


def parse_odbc(text: str) -> list[tuple[str, str]]:
    """Split an ODBC connection string the way a driver does: ``{...}`` values may hold ``;``."""
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(text):
        eq = text.index("=", i)
        key = text[i:eq]
        assert key, f"empty attribute name at {i} in {text!r}"
        assert ";" not in key, f"attribute without a value in {text!r}"
        j = eq + 1
        if j < len(text) and text[j] == "{":
            j += 1
            value = []
            while True:
                if text[j] == "}":
                    if text[j + 1 : j + 2] == "}":
                        value.append("}")
                        j += 2
                        continue
                    j += 1
                    break
                value.append(text[j])
                j += 1
            pairs.append((key, "".join(value)))
            assert j == len(text) or text[j] == ";", f"junk after a braced value in {text!r}"
        else:
            end = text.find(";", j)
            end = len(text) if end < 0 else end
            value_text = text[j:end]
            assert "{" not in value_text
            assert "}" not in value_text
            pairs.append((key, value_text))
            j = end
        i = j + 1
    return pairs


def test_parser_self_check() -> None:
    assert parse_odbc("A=1;PWD={x;}}y};B={}") == [("A", "1"), ("PWD", "x;}y"), ("B", "")]


def test_freetds_is_the_default_odbc_driver() -> None:
    assert settings().db_odbc_driver == "FreeTDS"
    assert settings().db_encrypt is True


def test_freetds_connection_string() -> None:
    assert odbc_connection_string(settings()) == (
        "DRIVER={FreeTDS};SERVER=pacs-sql.benton.local;PORT=1433;DATABASE=PACS_Benton;UID=tf_sync;"
        "PWD={s3cret};APP=pacs-sync;TDS_Version=7.4;Encryption=require"
    )


def test_freetds_without_encryption() -> None:
    text = odbc_connection_string(settings(db_encrypt=False))
    assert dict(parse_odbc(text))["Encryption"] == "off"
    assert text.endswith(";TDS_Version=7.4;Encryption=off")
    assert "Encrypt=" not in text
    assert "TrustServerCertificate" not in text


@pytest.mark.parametrize("driver", ["FreeTDS", "freetds", "FreeTDS 1.4"])
def test_freetds_is_detected_case_insensitively(driver: str) -> None:
    attributes = dict(parse_odbc(odbc_connection_string(settings(db_odbc_driver=driver))))
    assert attributes["DRIVER"] == driver
    assert attributes["TDS_Version"] == "7.4"
    assert attributes["PORT"] == "1433"
    assert attributes["SERVER"] == "pacs-sql.benton.local"


def test_microsoft_driver_connection_string() -> None:
    assert odbc_connection_string(settings(db_odbc_driver=MS_DRIVER)) == (
        "DRIVER={ODBC Driver 18 for SQL Server};SERVER=pacs-sql.benton.local,1433;DATABASE=PACS_Benton;"
        "UID=tf_sync;PWD={s3cret};APP=pacs-sync;Encrypt=yes;TrustServerCertificate=no"
    )


@pytest.mark.parametrize(
    ("encrypt", "trust", "expected_encrypt", "expected_trust"),
    [
        (True, False, "yes", "no"),
        (True, True, "yes", "yes"),
        (False, False, "no", "no"),
        (False, True, "no", "yes"),
    ],
)
def test_microsoft_driver_encryption_flags(
    encrypt: bool, trust: bool, expected_encrypt: str, expected_trust: str
) -> None:
    text = odbc_connection_string(
        settings(
            db_odbc_driver=MS_DRIVER, db_encrypt=encrypt, db_trust_server_certificate=trust, db_port=14330
        )
    )
    attributes = dict(parse_odbc(text))
    assert attributes["SERVER"] == "pacs-sql.benton.local,14330"
    assert "PORT" not in attributes
    assert "TDS_Version" not in attributes
    assert "Encryption" not in attributes
    assert attributes["Encrypt"] == expected_encrypt
    assert attributes["TrustServerCertificate"] == expected_trust


@pytest.mark.parametrize("driver", ["FreeTDS", MS_DRIVER])
@pytest.mark.parametrize(
    "password",
    ["p}a;ss", "}", "}}", "x;Encrypt=no", "a}};TrustServerCertificate=yes;b={", "{braced}", " spaced ", ""],
)
def test_password_is_brace_quoted(driver: str, password: str) -> None:
    text = odbc_connection_string(settings(db_odbc_driver=driver, db_password=password))
    escaped = password.replace("}", "}}")
    assert f";PWD={{{escaped}}};" in text
    pairs = parse_odbc(text)
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys))
    attributes = dict(pairs)
    assert attributes["PWD"] == password
    if driver == MS_DRIVER:
        assert attributes["Encrypt"] == "yes"
        assert attributes["TrustServerCertificate"] == "no"
    else:
        assert attributes["Encryption"] == "require"


@pytest.mark.parametrize("password", ["p}a;ss", "x;Encrypt=no", "ab}c"])
def test_password_never_appears_unquoted(password: str) -> None:
    for driver in ("FreeTDS", MS_DRIVER):
        text = odbc_connection_string(settings(db_odbc_driver=driver, db_password=password))
        quoted = "PWD={" + password.replace("}", "}}") + "}"
        assert text.count(quoted) == 1
        assert text.count("PWD=") == 1
        assert password not in text.replace(quoted, "PWD=<hidden>")
        if "}" in password:
            assert password not in text


def test_the_settings_repr_hides_the_password() -> None:
    s = settings(db_password="p}a;ss")
    assert "p}a;ss" not in repr(s)
    assert "p}a;ss" in odbc_connection_string(s).replace("}}", "}")


@pytest.mark.parametrize(("field", "value"), [("db_user", "tf;Encrypt=no"), ("db_name", "PACS;Encrypt=no")])
def test_other_values_are_quoted_too(field: str, value: str) -> None:
    text = odbc_connection_string(settings(db_odbc_driver=MS_DRIVER, **{field: value}))
    pairs = parse_odbc(text)
    keys = [k for k, _ in pairs]
    assert keys.count("Encrypt") == 1
    assert dict(pairs)["Encrypt"] == "yes"
    assert dict(pairs)["UID" if field == "db_user" else "DATABASE"] == value


# ---- error translation at the adapter ----


class _DriverError(Exception):
    pass


class _FailingConnection:
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.rolled_back = 0

    def cursor(self) -> _FailingConnection:
        return self

    def execute(self, statement: str, params: tuple[object, ...]) -> None:
        raise self.error

    def rollback(self) -> None:
        self.rolled_back += 1

    def close(self) -> None:
        pass


def _raised_from(exc: Exception, cause: BaseException) -> Exception:
    exc.__cause__ = cause  # as ``raise exc from cause`` leaves it
    return exc


@pytest.mark.parametrize(
    "error",
    [
        _raised_from(pg8000.exceptions.InterfaceError("network error"), BrokenPipeError(32, "Broken pipe")),
        pg8000.exceptions.InterfaceError("connection is closed"),
        # the FreeTDS text says "does not exist": still a lost connection, not a missing object
        _DriverError(
            "08S01",
            "[08S01] [FreeTDS][SQL Server]Unable to connect: Adaptive Server is unavailable or does not "
            "exist (20009)",
        ),
        _DriverError("HYT00", "[HYT00] [FreeTDS][SQL Server]Timeout expired (0)"),
    ],
)
def test_a_lost_source_connection_is_source_unavailable(error: Exception) -> None:
    conn = _FailingConnection(error)
    source = CdcSource(settings(db_driver="pg8000"), connection=conn)
    with pytest.raises(SourceUnavailableError) as raised:
        source.max_lsn()
    assert raised.value.code is ErrorCode.CONNECTION_UNAVAILABLE
    assert raised.value.retriable
    assert conn.rolled_back == 1


def test_statement_errors_keep_their_classification() -> None:
    missing = CdcSource(
        settings(db_driver="pg8000"),
        connection=_FailingConnection(_DriverError({"C": "42P01", "M": 'relation "cdc.x" does not exist'})),
    )
    with pytest.raises(SchemaMismatchError):
        missing.max_lsn()
    out_of_range = CdcSource(
        settings(db_driver="pg8000"),
        connection=_FailingConnection(
            _DriverError({"C": "22023", "M": "An insufficient number of arguments were supplied"})
        ),
    )
    with pytest.raises(LsnOutOfRangeError):
        out_of_range.max_lsn()
