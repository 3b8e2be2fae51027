"""Settings: bad input, precedence, secret files, DATABASE_URL, and passwords kept out of every output."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest
from support import Cli, make_project, rev_id, version

# Nothing listens on port 9: a config error must be found before any connection.
UNREACHABLE = "postgresql://postgres@127.0.0.1:9/nowhere"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        pytest.param({"MIGRATION_DATABASE_URL": "not a url"}, "MIGRATION_DATABASE_URL", id="malformed-url"),
        pytest.param({"MIGRATION_DATABASE_URL": "oracle://u@h/db"}, "'oracle' is not supported", id="dialect"),
        pytest.param(
            {"MIGRATION_DATABASE_URL": UNREACHABLE, "MIGRATION_SCRIPT_LOCATION": "/no/such/dir"},
            "MIGRATION_SCRIPT_LOCATION",
            id="missing-script-directory",
        ),
        pytest.param(
            {"MIGRATION_DATABASE_URL": UNREACHABLE, "MIGRATION_TARGET": "deadbeef"}, "deadbeef", id="unknown-target"
        ),
        pytest.param(
            {"MIGRATION_DATABASE_URL": UNREACHABLE, "MIGRATION_LOCK_TIMEOUT": "soon"},
            "MIGRATION_LOCK_TIMEOUT",
            id="non-numeric-timeout",
        ),
        pytest.param(
            {"MIGRATION_DATABASE_URL": UNREACHABLE, "MIGRATION_WAIT_TIMEOUT": "-5"},
            "MIGRATION_WAIT_TIMEOUT",
            id="negative-timeout",
        ),
        pytest.param({"MIGRATION_ENVIRONMENT": "prod"}, "MIGRATION_ENVIRONMENT", id="unknown-environment"),
        pytest.param({"MIGRATION_LOCK_TIMOUT": "5"}, "did you mean MIGRATION_LOCK_TIMEOUT", id="typo-variable"),
        pytest.param({"MIGRATION_ENVIRONMENT": "production"}, "MIGRATION_DATABASE_URL is not set", id="prod-no-url"),
        pytest.param(
            {"MIGRATION_DATABASE_URL": UNREACHABLE, "MIGRATION_LOG_LEVEL": "loud"},
            "MIGRATION_LOG_LEVEL",
            id="log-level",
        ),
    ],
)
def test_bad_input_exits_78_with_one_line_and_no_traceback(cli: Cli, env: dict[str, str], names: str) -> None:
    """Each bad setting gives exit 78 and one error line naming the problem, before any connection."""
    make_project(cli.cwd, revisions=2)

    result = cli(env=env)

    assert result.code == 78, result.stdout + result.stderr
    errors = [e for e in result.events if e["level"] == "error"]
    assert len(errors) == 1, result.stdout
    assert errors[0]["event"] == "config.invalid"
    assert names in errors[0]["error"]
    assert "\n" not in errors[0]["error"]
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr == ""


def test_flag_errors_name_the_flag(cli: Cli) -> None:
    """A bad value given as a flag is reported under the flag's name."""
    make_project(cli.cwd, revisions=1)

    result = cli("--lock-timeout", "abc", env={"MIGRATION_DATABASE_URL": UNREACHABLE})

    assert result.code == 78
    assert result.one("config.invalid")["error"].startswith("invalid setting --lock-timeout='abc'")


def test_unknown_command_is_a_usage_error(cli: Cli) -> None:
    """argparse's exit 2 for a command that does not exist."""
    result = cli("migrate-everything")
    assert result.code == 2
    assert "invalid choice" in result.stderr


def test_kubernetes_service_link_variables_are_not_typos(cli: Cli, pg_url: str) -> None:
    """MIGRATION_SERVICE_HOST, MIGRATION_PORT_5432_TCP_ADDR... from a Service named migration are ignored."""
    make_project(cli.cwd, revisions=1)
    links = {
        "MIGRATION_SERVICE_HOST": "10.0.0.1",
        "MIGRATION_SERVICE_PORT": "5432",
        "MIGRATION_SERVICE_PORT_HTTP": "80",
        "MIGRATION_PORT": "tcp://10.0.0.1:5432",
        "MIGRATION_PORT_5432_TCP": "tcp://10.0.0.1:5432",
        "MIGRATION_PORT_5432_TCP_ADDR": "10.0.0.1",
        "MIGRATION_PORT_5432_TCP_PORT": "5432",
        "MIGRATION_PORT_5432_TCP_PROTO": "tcp",
        "MIGRATION_RUNNER_SERVICE_HOST": "10.0.0.2",
    }

    result = cli(env={"MIGRATION_DATABASE_URL": pg_url, **links})

    assert result.code == 0, result.stdout


def config_of(cli: Cli, *args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    result = cli("config", *args, env=env)
    assert result.code == 0, result.stderr
    document: dict[str, object] = json.loads(result.stdout)
    return document


def test_precedence_flag_env_secret_dotenv_environment_defaults(cli: Cli, tmp_path: Path) -> None:
    """CLI flag > env var > secret file > .env.<environment> > .env > environment defaults > built-in."""
    make_project(cli.cwd, revisions=1)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "migration_lock_timeout").write_text("44\n")
    (secrets / "migration_wait_timeout").write_text("33\n")
    (cli.cwd / ".env").write_text(
        "MIGRATION_ENVIRONMENT=staging\nMIGRATION_LOCK_TIMEOUT=1\nMIGRATION_WAIT_TIMEOUT=2\n"
        "MIGRATION_TARGET=from-dotenv\nMIGRATION_VERSION_TABLE=from_dotenv\nMIGRATION_DATABASE_URL=sqlite:///x.db\n"
    )
    (cli.cwd / ".env.staging").write_text("MIGRATION_TARGET=from-staging\n")
    env = {"MIGRATION_SECRETS_DIR": str(secrets), "MIGRATION_LOCK_TIMEOUT": "55"}

    settings = config_of(cli, "--lock-timeout", "66", env=env)

    assert settings["MIGRATION_ENVIRONMENT"] == "staging"  # from .env
    assert settings["MIGRATION_LOCK_TIMEOUT"] == 66.0  # flag beats env var and secret
    assert settings["MIGRATION_WAIT_TIMEOUT"] == 33.0  # secret beats .env
    assert settings["MIGRATION_TARGET"] == "from-staging"  # .env.staging beats .env
    assert settings["MIGRATION_VERSION_TABLE"] == "from_dotenv"  # .env beats the built-in default
    assert config_of(cli, env=env)["MIGRATION_LOCK_TIMEOUT"] == 55.0  # env var beats secret


def test_environment_selects_defaults(cli: Cli) -> None:
    """development defaults to the SQLite file and short timeouts; production has JSON logs and no database."""
    make_project(cli.cwd, revisions=1)

    development = config_of(cli)
    assert development["MIGRATION_DATABASE_URL"] == "sqlite:///./migration-runner.db"
    assert development["MIGRATION_LOCK_TIMEOUT"] == 30.0

    production = config_of(cli, "--environment", "production")
    assert production["MIGRATION_DATABASE_URL"] is None
    assert production["MIGRATION_LOCK_TIMEOUT"] == 300.0
    assert production["MIGRATION_LOG_FORMAT"] == "json"


def test_database_url_from_a_secret_file(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """A Kubernetes Secret volume with migration_database_url configures the database."""
    make_project(cli.cwd, revisions=2)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "migration_database_url").write_text(pg_url + "\n")

    result = cli(env={"MIGRATION_SECRETS_DIR": str(secrets), "MIGRATION_ENVIRONMENT": "production"})

    assert result.code == 0, result.stdout
    assert version(pg_url) == [rev_id(2)]


def test_database_url_falls_back_to_DATABASE_URL(cli: Cli, pg_url: str) -> None:
    """With MIGRATION_DATABASE_URL unset, DATABASE_URL (postgres:// as Heroku writes it) is used."""
    make_project(cli.cwd, revisions=1)

    result = cli(env={"DATABASE_URL": pg_url.replace("postgresql://", "postgres://"), "MIGRATION_ENVIRONMENT": "test"})

    assert result.code == 0, result.stdout
    assert version(pg_url) == [rev_id(1)]


@pytest.mark.parametrize("password", ["hunter2-topsecret", "p@ss:w/rd%21"])
def test_password_never_appears_in_any_output_at_debug_level(cli: Cli, pg_url: str, password: str) -> None:
    """At debug level, across upgrade, a failure, check, current and config, the password is never printed."""
    url = pg_url.replace("postgresql://postgres@", f"postgresql://postgres:{quote(password, safe='')}@")
    env = {"MIGRATION_DATABASE_URL": url, "MIGRATION_LOG_LEVEL": "debug"}  # trust auth accepts any password
    make_project(cli.cwd, revisions=2, bodies={2: 'op.execute("SELECT * FROM missing")'})

    outputs = [cli(env=env), cli("check", env=env), cli("current", env=env), cli("config", env=env)]
    make_project(cli.cwd, revisions=2)
    outputs.append(cli(env=env))

    assert [r.code for r in outputs] == [65, 1, 0, 0, 0]
    assert any(e["event"] == "sqlalchemy.engine.Engine" for e in outputs[-1].events)  # debug reached SQLAlchemy
    for result in outputs:
        everything = result.stdout + result.stderr
        assert password not in everything
        assert quote(password, safe="") not in everything
    assert "postgres:***@" in outputs[0].stdout


def test_config_shows_the_file_in_use_the_secrets_dir_and_every_source(cli: Cli, tmp_path: Path) -> None:
    """`config` shows ./alembic.ini when it is in use, MIGRATION_SECRETS_DIR, and where each value came from."""
    make_project(cli.cwd, revisions=1)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "migration_wait_timeout").write_text("33\n")
    (cli.cwd / ".env").write_text("MIGRATION_TARGET=from-dotenv\n")
    env = {"MIGRATION_SECRETS_DIR": str(secrets), "MIGRATION_DATABASE_URL": "sqlite:///x.db"}

    settings = config_of(cli, "--lock-timeout", "5", env=env)

    assert settings["MIGRATION_ALEMBIC_CONFIG"] == "alembic.ini"
    assert settings["MIGRATION_SECRETS_DIR"] == str(secrets)
    sources = settings["sources"]
    assert isinstance(sources, dict)
    assert sources["MIGRATION_LOCK_TIMEOUT"] == "--lock-timeout"
    assert sources["MIGRATION_DATABASE_URL"] == "MIGRATION_DATABASE_URL"
    assert sources["MIGRATION_WAIT_TIMEOUT"] == f"secret file {secrets / 'migration_wait_timeout'}"
    assert sources["MIGRATION_TARGET"] == str(cli.cwd / ".env")
    assert sources["MIGRATION_CONNECT_TIMEOUT"] == "the development default"
    assert sources["MIGRATION_SECRETS_DIR"] == "environment"
    assert sources["MIGRATION_ALEMBIC_CONFIG"] == "found in the working directory"
    assert sources["MIGRATION_ENVIRONMENT"] == "default"


def test_a_settings_error_carries_the_run_fields_too(cli: Cli) -> None:
    """README promises run_id, command, environment and host on every line, config.invalid included."""
    make_project(cli.cwd, revisions=1)

    result = cli("check", env={"MIGRATION_LOCK_TIMOUT": "5", "MIGRATION_ENVIRONMENT": "staging"})

    invalid = result.one("config.invalid")
    assert result.code == 78
    assert invalid["command"] == "check" and invalid["environment"] == "staging"
    assert len(invalid["run_id"]) == 12 and invalid["host"]
    assert result.one("run.finished")["run_id"] == invalid["run_id"]
