"""runner.urls reads URLs without SQLAlchemy; it must read every one exactly as SQLAlchemy does."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import sqlalchemy

from runner import database, urls

CORPUS = [
    "postgresql://app:secret@db:5432/app",
    "postgresql+psycopg://app@db/app?sslmode=require&application_name=x",
    "postgres://u:p%40ss%3Aw%2Frd@[::1]:6432/app",
    "postgresql://u:p@ss@h:5432/db",
    "postgresql://u:pa%20ss@host/app?options=-c%20lock_timeout%3D5000&options=-c%20x%3Dy",
    "postgresql://host/?dbname=app&password=qs-secret&token=t0k",
    "postgresql:///app?host=/var/run/postgresql",
    "postgresql://@/app",
    "mysql://root@127.0.0.1:3306/test",
    "mariadb+pymysql://u:p@h/db?charset=utf8mb4&ssl_ca=/etc/ca.pem",
    "mysql+aiomysql://u:p%2B%20q@h:3307/db",
    "sqlite:///./migration-runner.db",
    "sqlite:////tmp/a b/c.db",
    "sqlite://",
    "sqlite+pysqlite:///:memory:",
    "postgresql://u:p@h:0/app",
    "postgresql://u:p@h:99999/app",
    "oracle://u:p@h/db",
    "postgresql+pg8000://u:p@h/db",
    "postgresql://h/",
    "  postgresql://u:p@h/app  ",
]
NOT_URLS = ["", "not a url", "postgresql://u:Zq7+se cr@t:x/y%25@host/app", "postgresql://u:p@h:5x/db", "://h/db"]


def as_sqlalchemy(url: sqlalchemy.URL) -> tuple[object, ...]:
    query = {k: (v,) if isinstance(v, str) else tuple(v) for k, v in url.query.items()}
    return (url.drivername, url.username, url.password, url.host, url.port, url.database, query)


def as_light(url: urls.DatabaseUrl) -> tuple[object, ...]:
    return (url.drivername, url.username, url.password, url.host, url.port, url.database, url.query)


@pytest.mark.parametrize("raw", CORPUS)
def test_split_reads_every_part_as_sqlalchemy_does(raw: str) -> None:
    """runner.urls reads every part of a URL as SQLAlchemy does, and renders it the same."""
    theirs = sqlalchemy.make_url(raw.strip())

    ours = urls.split(raw)

    assert as_light(ours) == as_sqlalchemy(theirs)
    assert ours.render(hide_password=False) == theirs.render_as_string(hide_password=False)
    assert ours.render() == theirs.render_as_string(hide_password=True)


@pytest.mark.parametrize("raw", NOT_URLS)
def test_what_sqlalchemy_cannot_parse_is_refused_without_echoing_it(raw: str) -> None:
    """A URL SQLAlchemy cannot parse is refused, without the URL in the message."""
    with pytest.raises((sqlalchemy.exc.ArgumentError, ValueError)):
        sqlalchemy.make_url(raw)
    with pytest.raises(ValueError, match="not a valid SQLAlchemy URL") as refused:
        urls.parse(raw)
    assert raw.strip() == "" or raw not in str(refused.value)


@pytest.mark.parametrize("raw", CORPUS)
def test_parse_and_the_sqlalchemy_url_agree(raw: str) -> None:
    """Both accept or refuse alike, and name the same normalised URL, secrets and redacted form."""
    try:
        light = urls.parse(raw)
    except ValueError as refused:
        with pytest.raises(ValueError, match=re.escape(str(refused))):
            database.parse_url(raw)
        return
    full = database.parse_url(raw)

    assert as_light(light) == as_sqlalchemy(full)
    assert light.redacted() == database.redact(full)
    assert light.secrets() == database.secrets_of(full)
    assert light.family == database.family(full)
    assert light.database_name == database.database_name(full)


def test_redaction_drops_every_secret() -> None:
    """Redaction drops the password in the userinfo and in the query, in every spelling."""
    url = urls.parse("postgresql://u:pw%2B1@h/app?password=qs&sslmode=require")

    assert url.redacted() == "postgresql+psycopg://u:***@h/app?sslmode=require"
    assert {"pw+1", "pw%2B1", "qs"} <= set(url.secrets())


def test_reading_a_url_imports_no_sqlalchemy() -> None:
    """Reading a URL imports no SQLAlchemy."""
    code = "import sys, runner.urls as u; u.parse('postgresql://u:p@h/app'); print('sqlalchemy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)

    assert result.stdout.strip() == "False"
