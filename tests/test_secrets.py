"""No password, in any form, in any output: logs (at debug), the result document, the termination message,
the metrics textfile and ``config``.

The server uses trust authentication, so any password connects: the runs below do real work.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import pytest
import sqlalchemy
from support import Cli, every_channel, make_project, rev_id

SECRET = "Zq7+se cr@t:x/y%"  # noqa: S105 (a test password); +, space, @, :, / and % take a different form in every encoding


def forms(secret: str) -> set[str]:
    """The ways a password may be spelt in an output."""
    rendered = sqlalchemy.engine.URL.create("x", username="u", password=secret, host="h").render_as_string(False)
    return {
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
        rendered[len("x://u:") : -len("@h")],
        secret.rsplit("@", 1)[-1],  # the tail a port-parsing error used to echo
    }


def url_with(pg_url: str, *, where: str) -> str:
    parsed = sqlalchemy.make_url(pg_url)
    if where == "userinfo":
        return parsed.set(password=SECRET).render_as_string(hide_password=False)
    return parsed.update_query_dict({"password": SECRET}).render_as_string(hide_password=False)


# env.py's error repeats the URL and a libpq DSN with the password, as driver errors do.
LEAKY_REVISION = (
    "from alembic import context\n"
    "url = context.config.get_main_option('sqlalchemy.url')\n"
    "pw = op.get_bind().engine.url.password or op.get_bind().engine.url.query.get('password')\n"
    "raise RuntimeError(f'cannot use {url} (host=127.0.0.1 password={pw} dbname=x)')"
)


@pytest.mark.parametrize("where", ["userinfo", "query"])
def test_a_failing_revision_that_repeats_the_url_leaks_nothing(
    cli: Cli, pg_url: str, tmp_path: Path, where: str
) -> None:
    """At debug, with --json, a termination log and a textfile: the password in no form anywhere."""
    make_project(cli.cwd, revisions=2, bodies={2: LEAKY_REVISION})
    env = {"MIGRATION_DATABASE_URL": url_with(pg_url, where=where)}

    code, text = every_channel(cli, tmp_path, env, "--json")
    config_code, config_text = every_channel(cli, tmp_path, env, "config")

    assert code == 65, text[-3000:]
    assert "cannot use" in text  # the message itself is kept, with the secret cut out
    assert config_code == 0
    for form in forms(SECRET):
        assert form not in text, f"{form!r} leaked"
        assert form not in config_text, f"{form!r} leaked by config"


@pytest.mark.parametrize("where", ["userinfo", "query"])
@pytest.mark.parametrize("refusal", ["unreachable", "sslmode"])
def test_a_rejected_connection_leaks_nothing(cli: Cli, pg_url: str, tmp_path: Path, where: str, refusal: str) -> None:
    """database.unavailable and config.invalid name the URL: redacted in logs, document and termination message."""
    make_project(cli.cwd, revisions=1)
    if refusal == "unreachable":
        url = url_with("postgresql://postgres@127.0.0.1:9/nowhere", where=where)
    else:  # the server has no SSL: refused at once, as a configuration error
        url = sqlalchemy.make_url(url_with(pg_url, where=where)).update_query_dict({"sslmode": "require"})
        url = url.render_as_string(hide_password=False)
    env = {"MIGRATION_DATABASE_URL": url, "MIGRATION_CONNECT_TIMEOUT": "0"}

    code, text = every_channel(cli, tmp_path, env, "--json")

    assert code == {"unreachable": 69, "sslmode": 78}[refusal]
    assert "127.0.0.1" in text
    for form in forms(SECRET):
        assert form not in text, f"{form!r} leaked"


def test_an_unencoded_password_is_not_echoed_by_the_parse_error(cli: Cli, tmp_path: Path) -> None:
    """postgresql://u:p@ss:word@host/db does not parse: 78, and no part of the password is shown."""
    make_project(cli.cwd, revisions=1)
    env = {"MIGRATION_DATABASE_URL": "postgresql://postgres:hunter@2:tail99@127.0.0.1/db"}

    code, text = every_channel(cli, tmp_path, env, "--json")

    assert code == 78
    assert "tail99" not in text and "hunter" not in text


def test_applied_revisions_log_no_password_at_debug(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """A successful run at debug (SQLAlchemy logs every statement) leaks nothing either."""
    make_project(cli.cwd, revisions=2)
    env = {"MIGRATION_DATABASE_URL": url_with(pg_url, where="userinfo")}

    code, text = every_channel(cli, tmp_path, env, "--json")

    assert code == 0, text[-2000:]
    assert rev_id(2) in text
    for form in forms(SECRET):
        assert form not in text, f"{form!r} leaked"
