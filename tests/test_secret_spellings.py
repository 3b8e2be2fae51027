"""For arbitrary passwords, no channel shows the password in any spelling (issue 23, point 10).

Hypothesis draws passwords with quotes, backslashes, ``%``, ``+``, spaces and non-ASCII
characters. The server trusts every login, so any password connects and the runs do real work.
Each run writes through every channel a user reads: the JSON logs at debug (SQLAlchemy's
statement log included), stderr, the result document, the termination message, the metrics
textfile, the ledger's ``error`` column (``history``), and ``plan`` in text, JSON and markdown.
The spellings come from the layers that rewrite a password on its way out: ``repr()`` of a
str and of bytes, JSON, SQL quote-doubling, ``%``-doubling and URL encoding.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support import Cli, copy_django_example, every_channel, make_project

# The drawn part follows a fixed prefix, so a spelling cannot turn up in the output by chance.
PREFIX = "Zq9"
ALPHABET = st.sampled_from(list("'\"\\%+ :@/&=;#?äöü€日") + list("abcXYZ019"))
PASSWORDS = st.text(ALPHABET, min_size=4, max_size=16).map(lambda tail: PREFIX + tail)

# A revision that shows the password every way project code does: print(), repr() of a dict, of
# bytes, json.dumps(), and the URL itself, then fails.
LEAKY = """
import json as _json
from alembic import context
pw = os.environ["APP_PASSWORD"]
url = context.config.get_main_option("sqlalchemy.url")
print("connecting with", pw, repr(pw), _json.dumps(pw), url)
raise RuntimeError(repr({"url": url, "password": pw}) + " " + repr(pw.encode()) + " " + _json.dumps(pw))
"""
# A revision whose SQL holds the password as a literal (ALTER ROLE ... PASSWORD '...'): plan renders it.
IN_SQL = """
pw = os.environ["APP_PASSWORD"]
op.execute("ALTER ROLE no_such_role_here PASSWORD '" + pw.replace("'", "''") + "'")
"""


def spellings(password: str) -> set[str]:
    """The oracle: how the password may come out, written independently of runner.logs."""
    forms = {password, password.replace("'", "''"), password.replace("%", "%%")}
    out = set(forms)
    for form in forms:
        out |= {
            repr(form)[1:-1],
            json.dumps(form)[1:-1],
            json.dumps(form, ensure_ascii=False)[1:-1],
            repr(form.encode())[2:-1],
        }
    for encoded in (urllib.parse.quote(password, safe=""), urllib.parse.quote_plus(password)):
        out |= {encoded, encoded.lower()}
    out.add(sqlalchemy.engine.URL.create("x", password=password, host="h").render_as_string(False)[5:-2])
    return {form for form in out if PREFIX.lower() in form.lower()}


def url_with(pg_url: str, password: str) -> str:
    parsed = urllib.parse.urlsplit(pg_url)
    netloc = f"postgres:{urllib.parse.quote(password, safe='')}@{parsed.hostname}:{parsed.port or 5432}"
    return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))


def assert_no_spelling(password: str, text: str, where: str) -> None:
    for form in spellings(password):
        assert form not in text, f"{form!r} (of {password!r}) leaked through {where}"


PROPERTY = settings(
    max_examples=8,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.timeout(600)
@PROPERTY
@given(password=PASSWORDS)
@example(password=PREFIX + "it's a \\ test")  # repr() escaped the quote and the backslash
@example(password=PREFIX + "päss wörd")  # JSON \u00e4, bytes \xc3\xa4
@example(password=PREFIX + "50%+off ")  # %%, + for a space
@example(password=PREFIX + 'say "hi" \'')  # both quotes: repr() escapes one of them
def test_a_failing_revision_shows_the_password_nowhere(
    cli: Cli, pg_databases: Callable[[], str], tmp_path: Path, password: str
) -> None:
    """For any password, a revision that prints and raises it in every spelling leaks it through no channel."""
    make_project(cli.cwd, revisions=2, bodies={2: LEAKY})
    env = {"MIGRATION_DATABASE_URL": url_with(pg_databases(), password), "APP_PASSWORD": password}

    code, upgraded = every_channel(cli, tmp_path, env, "upgrade", "--output", "json")
    history_code, history = every_channel(cli, tmp_path, env, "history", "--output", "json")

    assert code == 65, upgraded[-3000:]
    assert "RuntimeError" in upgraded  # the error itself is shown, with the password cut out
    assert_no_spelling(password, upgraded, "upgrade")
    assert history_code == 0 and '"failed"' in history
    assert_no_spelling(password, history, "history (the ledger's error column)")


@pytest.mark.timeout(600)
@PROPERTY
@given(password=PASSWORDS)
@example(password=PREFIX + "it's 100% ok")  # '' and %% in the rendered SQL
@example(password=PREFIX + "ünï'cødé")
def test_a_password_in_a_revisions_sql_is_cut_from_plan_and_the_statement_log(
    cli: Cli, pg_databases: Callable[[], str], tmp_path: Path, password: str
) -> None:
    """For any password in a revision's SQL, plan (three formats) and the debug statement log show no spelling of it."""
    make_project(cli.cwd, revisions=1, bodies={1: IN_SQL})
    env = {"MIGRATION_DATABASE_URL": url_with(pg_databases(), password), "APP_PASSWORD": password}

    for output in ("text", "json", "markdown"):
        code, planned = every_channel(cli, tmp_path, env, "plan", "--output", output)
        assert code in (0, 1), planned[-3000:]
        assert "ALTER ROLE no_such_role_here" in planned
        assert_no_spelling(password, planned, f"plan --output {output}")
    code, upgraded = every_channel(cli, tmp_path, env, "upgrade")  # at debug: SQLAlchemy logs the statement
    assert code == 65, upgraded[-3000:]
    assert_no_spelling(password, upgraded, "upgrade at debug")


def test_pushgateway_userinfo_with_a_space_is_not_shown_decoded(cli: Cli, pg_url: str) -> None:
    """publish.failed named the Pushgateway URL with its userinfo's password decoded."""
    make_project(cli.cwd, revisions=1)
    password = PREFIX + "push gate+way"
    gateway = f"http://pusher:{urllib.parse.quote(password, safe='')}@127.0.0.1:9/"

    result = cli("upgrade", env={"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_PUSHGATEWAY_URL": gateway})

    assert result.code == 0, result.stdout + result.stderr
    assert result.named("publish.failed")
    assert_no_spelling(password, result.stdout + result.stderr, "publish.failed")


def test_print_in_a_revision_is_a_json_event_and_the_document_stays_json(cli: Cli, pg_url: str) -> None:
    """--output json: stdout is the document alone; what a revision prints is a redacted project.output event."""
    make_project(cli.cwd, revisions=1, bodies={1: 'print("hello from a revision")\nprint("no newline", end="")'})

    result = cli("upgrade", "--output", "json", env={"MIGRATION_DATABASE_URL": pg_url})

    assert result.code == 0, result.stdout + result.stderr
    json.loads(result.stdout)  # the whole of stdout is one document
    lines = [event["line"] for event in result.named("project.output")]
    assert lines == ["hello from a revision", "no newline"]
    assert all(line.startswith("{") for line in result.stderr.splitlines() if line.strip())


# A Django migration that shows what project code has at hand: the settings' entry and the driver's parameters.
DJANGO_LEAKY = """
from django.db import connection, migrations


def show(apps, schema_editor):
    from django.conf import settings

    raise RuntimeError(repr(settings.DATABASES["default"]) + " " + repr(connection.get_connection_params()))


class Migration(migrations.Migration):
    dependencies = [("shop", "0003_product_name_index")]
    operations = [migrations.RunPython(show)]
"""


@pytest.mark.parametrize("password", [PREFIX + 'it\'s a \\\\ "test" ä%+'], ids=["quotes-backslash-non-ascii"])
def test_django_settings_and_connection_parameters_show_no_password(
    cli: Cli, pg_url: str, tmp_path: Path, password: str
) -> None:
    """The project's own DATABASES entry carries the password: repr() of it and of get_connection_params()."""
    cli.cwd.rmdir()
    project = copy_django_example(cli.cwd)
    (project / "shop" / "migrations" / "0004_show.py").write_text(DJANGO_LEAKY)
    parsed = sqlalchemy.make_url(pg_url)
    entry = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parsed.database,
        "USER": parsed.username,
        "PASSWORD": password,
        "HOST": parsed.host,
        "PORT": str(parsed.port or 5432),
    }
    (project / "leaky_settings.py").write_text(
        f"from mysite.settings import *\n\nDATABASES = {{'default': {entry!r}}}\n"
    )
    env = {"DJANGO_SETTINGS_MODULE": "leaky_settings"}

    code, upgraded = every_channel(cli, tmp_path, env, "upgrade", "--output", "json")
    history_code, history = every_channel(cli, tmp_path, env, "history", "--output", "json")

    assert code == 65, upgraded[-3000:]
    assert "RuntimeError" in upgraded
    assert_no_spelling(password, upgraded, "a Django migration's error")
    assert history_code == 0
    assert_no_spelling(password, history, "history")
