"""Settings from flags, environment variables, secret files and ``.env`` files, read once and frozen.

Precedence, highest first (docs/configuration.md)::

    CLI flag > environment variable > secret file > .env.<environment> > .env
             > environment defaults > built-in defaults

Which tool and which database a run works on is resolved from these settings
by :func:`runner.target.resolve`, which also holds the database URL's longer
chain (``DATABASE_URL``, the tool's own fallback, the development default).

Every setting is validated before any connection is made; a problem raises
:class:`runner.errors.ConfigError` with one line naming the variable.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from dotenv import dotenv_values
from pydantic import Field, PrivateAttr, SecretStr, StringConstraints, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from runner import urls
from runner.errors import ConfigError, ExitCode

PREFIX = "MIGRATION_"
ENVIRONMENTS = ("development", "test", "staging", "production")
DEFAULT_SECRETS_DIR = "/run/secrets"

# Defaults that depend on MIGRATION_ENVIRONMENT. Only development gets a database
# of its own, so a newcomer needs no server; elsewhere a missing URL is an error.
ENVIRONMENT_DEFAULTS: dict[str, dict[str, Any]] = {
    "development": {
        "lock_timeout": 30.0,
        "wait_timeout": 60.0,
        "connect_timeout": 10.0,
    },
    "test": {"lock_timeout": 60.0, "wait_timeout": 120.0, "connect_timeout": 30.0},
    "staging": {},
    "production": {"log_format": "json"},
}

# Variables read outside the Settings model, yet valid under the prefix.
META_VARIABLES = ("MIGRATION_SECRETS_DIR",)

# Kubernetes injects service-link variables for a Service named "migration" or
# "migration-runner" (Kubernetes docs, "Service > Discovering services").
_SERVICE_LINK = re.compile(
    r"^MIGRATION(_RUNNER)?_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?)$"
)

# The largest duration any setting takes: PostgreSQL's lock_timeout and statement_timeout
# are at most INT_MAX milliseconds (PostgreSQL docs, "20.11 Client Connection Defaults").
MAX_SECONDS = 2_147_483.0
Seconds = Annotated[float, Field(allow_inf_nan=False, le=MAX_SECONDS)]
NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
# Revision ids, comma-separated or a JSON array. NoDecode: pydantic-settings would read the value as
# JSON first, and `0001` is no JSON (a plain list field then failed with its SettingsError).
RevisionList = Annotated[list[NonEmpty], NoDecode]
OptionalRevisionList = Annotated[list[NonEmpty] | None, NoDecode]  # NoDecode must be outside the union


def _no_revisions() -> list[str]:
    """Not ``list``: pydantic's ``inspect.signature`` of a builtin compiles tokenize's regex (~30 ms; test_noop)."""
    return []


class Settings(BaseSettings):
    """Effective settings of one run. Field ``x`` is variable ``MIGRATION_X``.

    Durations are in seconds. Build it with :func:`load_settings`, which applies
    the documented precedence and turns validation errors into one line each.
    """

    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        case_sensitive=False,
        extra="ignore",
        env_file_encoding="utf-8",
        validate_default=True,
        frozen=True,  # read once: nothing writes to the settings after load_settings returns them
    )

    environment: Literal["development", "test", "staging", "production"] = Field(
        "development", description="Deployment environment; selects defaults and .env.<environment>."
    )
    database_url: SecretStr | None = Field(
        None,
        description="SQLAlchemy URL (secret). postgres:// and postgresql:// use psycopg 3. Falls back to "
        "DATABASE_URL, then the Alembic ini's sqlalchemy.url, then (development only) SQLite.",
    )
    databases_file: Path | None = Field(
        None,
        description="A file of database URLs, one per line (blank lines and # comments ignored), e.g. a "
        "Kubernetes Secret key mounted as a file: the run's database is line MIGRATION_DATABASE_INDEX; "
        "--all runs every one.",
    )
    database_index: int | None = Field(
        None,
        ge=0,
        description="Which database of MIGRATION_DATABASES_FILE this run migrates, from 0. Default: "
        "JOB_COMPLETION_INDEX, which Kubernetes sets in each pod of an Indexed Job.",
    )
    parallelism: int = Field(4, ge=1, le=64, description="--all: how many databases run at once.")
    tool: Literal["auto", "alembic", "django"] = Field(
        "auto",
        description="Migration system: alembic, django, or auto (Django when DJANGO_SETTINGS_MODULE is set "
        "and no Alembic configuration is found; Alembic when only that is found).",
    )
    django_database: NonEmpty = Field("default", description="Django: the DATABASES alias to migrate.")
    django_system_checks: bool = Field(
        False,
        description="Django: run the system checks on a no-op too (migrate runs them whenever it applies).",
    )
    alembic_config: Path | None = Field(None, description="Path to alembic.ini. Default: ./alembic.ini when it exists.")
    script_location: str | None = Field(
        None, description="Alembic script directory; overrides the ini's script_location."
    )
    target: NonEmpty = Field(
        "heads", description="Revision to upgrade to; 'heads' means every head. upgrade never downgrades."
    )
    version_table: NonEmpty = Field("alembic_version", description="Alembic version table name.")
    version_table_schema: NonEmpty | None = Field(None, description="Schema of the version table.")
    history_table: NonEmpty = Field(
        "migration_runner_history",
        description="The runner's ledger of revision steps, beside the version table.",
    )
    lock_timeout: Seconds = Field(300.0, gt=0, description="Seconds to wait for the advisory lock.")
    lock_key: str | None = Field(
        None,
        description="Advisory lock key: a 64-bit integer or any text (hashed). "
        "Default: derived from the database and version table.",
    )
    wait_timeout: Seconds = Field(300.0, gt=0, description=f"Seconds 'wait' polls before exit {int(ExitCode.TIMEOUT)}.")
    connect_timeout: Seconds = Field(
        60.0,
        ge=0,
        description="Seconds to keep retrying a failing connection (refused, starting up) "
        f"before exit {int(ExitCode.DATABASE_UNAVAILABLE)}.",
    )
    ddl_lock_timeout: Seconds = Field(
        2.0,
        ge=0,
        description="PostgreSQL lock_timeout of each revision, seconds (0: none); MySQL lock_wait_timeout. "
        "Short, so DDL never queues production traffic for long.",
    )
    statement_timeout: Seconds = Field(
        0.0, ge=0, description="PostgreSQL statement_timeout of each revision, seconds (0: none)."
    )
    revision_retries: int = Field(
        5, ge=0, description="Retries of a revision that failed with 55P03, 40P01 or 40001, with backoff."
    )
    timeout: Seconds = Field(
        3600.0,
        ge=0,
        description=f"Deadline for the whole run, seconds (0: none); exit {int(ExitCode.TIMEOUT)} when it passes.",
    )
    grace_period: Seconds = Field(
        10.0,
        ge=0,
        description="After a signal or the deadline, seconds allowed for rollback and lock release "
        "before the process exits anyway (the server rolls back when the connection dies).",
    )
    allow_unknown_revision: bool = Field(
        False,
        description="Treat a database at a revision the script directory lacks "
        "(an application rollback) as success in 'upgrade' and 'wait'.",
    )
    drift: Literal["warn", "fail", "off"] = Field(
        "warn",
        description="upgrade and check compare each applied revision's file with the checksum the ledger "
        "recorded: warn logs revision.drifted, fail exits 65 before any change, off skips the comparison.",
    )
    verify_heads: OptionalRevisionList = Field(
        None,
        description="verify: the heads the project has on purpose (branch labels), comma-separated; "
        "single_head then passes when the heads are exactly these.",
    )
    verify_irreversible: RevisionList = Field(
        default_factory=_no_revisions,
        description="verify: revisions whose downgrade cannot work by design (it raises NotImplementedError), "
        "comma-separated; their stairway cases are skipped, not failed, and the stairway goes on below them.",
    )
    noop_downgrades: RevisionList = Field(
        default_factory=_no_revisions,
        description="Revisions whose downgrade() is empty on purpose (a repair, a data check), comma-separated, "
        "as the reports name them: downgrade runs through them, recorded as reverted and marked noop, instead of "
        "refusing them; verify expects what their upgrade made to remain, and applies them again.",
    )
    verify_released: str | None = Field(
        None,
        description="verify: the target the running release's database is at (as upgrade takes it); "
        "backward_compatible checks every revision after it. Default: the newest revision alone.",
    )
    accept_flags: RevisionList = Field(
        default_factory=_no_revisions,
        description="plan and verify: flags a revision opts out of, as REVISION:KIND, comma-separated "
        "(a deliberate contract step: 0042:backward_incompatible); a '# migration-runner: accept KIND' line "
        "in the revision's file does the same.",
    )
    verify_allow_nonempty: bool = Field(
        False,
        description="verify: run on a database that already holds objects, in any schema (--allow-nonempty); "
        "refused in production.",
    )
    junit_xml: Path | None = Field(None, description="verify: also write the report as JUnit XML here (--junit-xml).")
    verify_data_dir: Path | None = Field(
        None,
        description="verify: a directory of rows keyed by revision id (REV.sql, or REV.py defining seed(connection)); "
        "each runs just before its revision in the upgrade, so the stairway meets real data (--data-dir).",
    )
    allow_trace: bool = Field(
        False, description="Let 'plan --trace' run in production: it holds the locks it measures while it runs."
    )
    allow_downgrade: bool = Field(
        False, description="Let 'downgrade' run in production (refused there otherwise); set it only on its own Job."
    )
    before_apply_command: Annotated[list[NonEmpty] | None, NoDecode] = Field(
        None,
        min_length=1,
        description="A program run under the lock before the first revision, only when something is pending: "
        'a JSON array, never a shell string, e.g. ["pg_dump", "-Fc", "-f", "/backup/before.dump"]. '
        f"Non-zero exit or timeout: nothing is applied, exit {int(ExitCode.TIMEOUT)}.",
    )
    before_apply_timeout: Seconds = Field(
        600.0, gt=0, description="Seconds MIGRATION_BEFORE_APPLY_COMMAND may run before it is stopped."
    )
    output: Literal["text", "json", "markdown"] = Field(
        "text",
        description="json: print one result document on stdout at the end (logs go to stderr); "
        "plan also takes markdown.",
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="Serve Prometheus metrics on this port while the run lasts (off if unset)."
    )
    metrics_bind_address: str = Field("0.0.0.0", description="Address the metrics endpoint binds.")  # noqa: S104  (a pod's port is only reachable as configured)
    metrics_linger: Seconds = Field(
        0.0, ge=0, description="Seconds to keep serving metrics after the run, so a scrape sees the final values."
    )
    metrics_textfile: Path | None = Field(
        None, description="Write the metrics here (atomically) for node-exporter's textfile collector."
    )
    pushgateway_url: str | None = Field(
        None, description="Push the metrics to this Pushgateway at the end of every run."
    )
    pushgateway_job: str = Field("migration-runner", description="The job label of the Pushgateway group.")
    pushgateway_username: str | None = Field(None, description="Pushgateway basic-auth user.")
    pushgateway_password: SecretStr | None = Field(None, description="Pushgateway basic-auth password (secret).")
    pushgateway_token: SecretStr | None = Field(None, description="Pushgateway bearer token (secret).")
    termination_log: Path = Field(
        Path("/dev/termination-log"),
        description="Where the JSON summary for `kubectl describe pod` goes, when that file exists.",
    )
    # Kubernetes' own limits (a DNS subdomain name, 253; a namespace is a DNS label, 63): the ledger stores them.
    pod_name: str | None = Field(None, max_length=253, description="Downward API metadata.name: the pod's name.")
    pod_namespace: str | None = Field(None, max_length=63, description="Downward API metadata.namespace.")
    node_name: str | None = Field(None, max_length=253, description="Downward API spec.nodeName.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["json", "console", "auto"] = Field(
        "auto", description="json, console, or auto (console on a TTY, JSON otherwise)."
    )

    @field_validator("log_level", "log_format", "environment", "output", "tool", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("before_apply_command", mode="before")
    @classmethod
    def _argv(cls, value: Any) -> Any:
        if value is None:  # unset
            return value
        if isinstance(value, str):  # NoDecode: the variable's text, as given
            try:
                value = json.loads(value)
            except ValueError:
                value = "not JSON"
            if value is None:  # JSON null: a backup the operator asked for must not silently be no backup
                raise ValueError("null is no command; unset the variable to run none")
        if not isinstance(value, list):
            raise ValueError(
                "must be a JSON array of strings (a program and its arguments, never a shell string), e.g. "
                '["pg_dump", "-Fc", "-f", "/backup/before.dump"]'
            )
        if any(isinstance(argument, str) and "\x00" in argument for argument in value):
            raise ValueError("an argument holds a NUL character, which no program can receive")
        return value

    @field_validator("history_table")
    @classmethod
    def _not_another_table(cls, value: str, info: ValidationInfo) -> str:
        # The ledger is created, altered and written by the runner: it must never be a table it does not own.
        taken = {str(info.data.get("version_table", "")).lower(), "alembic_version", "django_migrations"}
        if value.lower() in taken:
            raise ValueError("names a version table; the ledger needs a table of its own")
        if value.lower().startswith(("pg_", "sqlite_")):
            raise ValueError("pg_ and sqlite_ names belong to the database's own catalog; choose another name")
        return value

    @field_validator("accept_flags")
    @classmethod
    def _revision_and_kind(cls, value: list[str]) -> list[str]:
        if not value:  # validate_default runs this on every run: the no-op need not import runner.flags
            return value
        from runner.flags import KINDS  # noqa: PLC0415

        for entry in value:
            revision, _, kind = entry.rpartition(":")
            if not revision or kind not in KINDS:
                raise ValueError(f"{entry!r} is not REVISION:KIND, with KIND one of {', '.join(KINDS)}")
        return value

    @field_validator("verify_heads", "verify_irreversible", "noop_downgrades", "accept_flags", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):  # a JSON array is taken as it is; otherwise comma-separated ids
            stripped = value.strip()
            if stripped.startswith("["):
                return json.loads(stripped)
            return [part for part in (p.strip() for p in stripped.split(",")) if part]
        return value

    @field_validator("pushgateway_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("database_url")
    @classmethod
    def _parse_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            urls.parse(value.get_secret_value())  # raises ValueError, no URL echoed
        return value

    @field_validator("metrics_textfile")
    @classmethod
    def _regular_file(cls, value: Path | None) -> Path | None:
        # write_to_textfile renames over the target: a device or a symlink would be replaced.
        if value is not None and os.path.lexists(value) and not stat.S_ISREG(os.lstat(value).st_mode):
            raise ValueError("exists and is not a regular file (a device, a symlink or a directory)")
        return value

    _sources: dict[str, str] = PrivateAttr(default_factory=dict)
    _secrets_dir: tuple[str, str] = PrivateAttr((DEFAULT_SECRETS_DIR, "default"))
    _cwd: Path = PrivateAttr(Path())

    @property
    def cwd(self) -> Path:
        """The working directory the settings were read in (``.env`` files; the project's files)."""
        return self._cwd

    def source_of(self, name: str) -> str:
        """Where setting ``name`` (a field name) came from: a flag, ``environment``, a file, or ``default``."""
        return self._sources.get(name, "default")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Order the sources as the module docstring documents (first wins)."""
        return (
            init_settings,
            env_settings,
            file_secret_settings,
            dotenv_settings,
            _EnvironmentDefaults(settings_cls),
        )

    def redacted(self) -> dict[str, Any]:
        """The settings as JSON-ready values, secrets shown as ``**********``, with where each came from.

        :meth:`runner.target.Target.shown` adds the tool and the (redacted) database URL.

        Returns:
            One key per setting, named as its environment variable, and ``sources``.

        """
        values = self.model_dump(mode="json")  # SecretStr dumps as "**********"
        sources = {PREFIX + name.upper(): self.source_of(name) for name in values}
        redacted: dict[str, Any] = {PREFIX + name.upper(): value for name, value in values.items()}
        redacted["MIGRATION_SECRETS_DIR"], sources["MIGRATION_SECRETS_DIR"] = self._secrets_dir
        redacted["sources"] = sources
        return redacted


class _EnvironmentDefaults(PydanticBaseSettingsSource):
    """The lowest-precedence source: defaults chosen by the resolved environment."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ returns the whole mapping

    def __call__(self) -> dict[str, Any]:
        environment = self.current_state.get("environment", "development")
        return dict(ENVIRONMENT_DEFAULTS.get(environment, {}))


def known_variables() -> list[str]:
    """Every ``MIGRATION_*`` name this version accepts, sorted."""
    return sorted([PREFIX + name.upper() for name in Settings.model_fields] + list(META_VARIABLES))


def _edits(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions that turn ``a`` into ``b``."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def _misspelt_prefix(name: str, known: list[str]) -> str | None:
    """The setting a variable like ``MIGRATON_DATABASE_URL`` was meant to be, if any.

    Only a name whose start is at most two edits from ``MIGRATION_`` and whose
    whole is at most two edits from a known setting counts, so an
    application's own ``MIGRATIONS_PATH`` is left alone.
    """
    if name.startswith(PREFIX) or _edits(name[: len(PREFIX)], PREFIX) > 2:
        return None
    close = [k for k in known if abs(len(k) - len(name)) <= 2 and _edits(name, k) <= 2]
    return close[0] if close else None


def _check_unknown(names: list[str], where: str) -> None:
    known = known_variables()
    for name in names:
        upper = name.upper()
        meant = _misspelt_prefix(upper, known)
        if meant:
            raise ConfigError(f"unknown setting {upper} in {where}; did you mean {meant}?")
        if not upper.startswith(PREFIX) or upper in known or _SERVICE_LINK.match(upper):
            continue
        import difflib  # noqa: PLC0415  (only for a variable that is not known)

        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else f"; valid settings: {', '.join(sorted(known))}"
        raise ConfigError(f"unknown setting {upper} in {where}{hint}")


def _read_dotenv(path: Path) -> dict[str, str | None]:
    """The variables of one ``.env`` file; unreadable or binary is a one-line ConfigError."""
    try:
        path.read_text(encoding="utf-8")
        return dict(dotenv_values(path, encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read it as a UTF-8 .env file ({_reason(error)})") from None


def _reason(error: OSError | UnicodeDecodeError) -> str:
    if isinstance(error, UnicodeDecodeError):
        return f"not UTF-8 at byte {error.start}"
    return error.strerror or type(error).__name__


def _check_secret_files(directory: Path) -> None:
    """Every secret file named like a setting must be readable UTF-8 text.

    pydantic-settings would otherwise raise mid-validation (a traceback) or,
    for a dangling symlink, silently skip the file.
    """
    known = {name.lower() for name in known_variables()}
    try:
        entries = list(directory.iterdir())
    except OSError as error:
        raise ConfigError(f"MIGRATION_SECRETS_DIR={str(directory)!r}: {_reason(error)}") from None
    for entry in entries:
        if entry.name.lower() not in known:
            continue
        try:
            entry.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            what = "a dangling symlink" if entry.is_symlink() and not entry.exists() else _reason(error)
            raise ConfigError(f"secret file {entry}: cannot read it as UTF-8 text ({what})") from None


def _resolve_environment(flag: str | None, environ: Mapping[str, str], dotenv: Mapping[str, Any]) -> str:
    raw = flag or environ.get("MIGRATION_ENVIRONMENT") or dotenv.get("MIGRATION_ENVIRONMENT") or "development"
    value = str(raw).lower()
    if value not in ENVIRONMENTS:
        source = "--environment" if flag else "MIGRATION_ENVIRONMENT"
        raise ConfigError(f"{source}={raw!r} is not a known environment; use one of {', '.join(ENVIRONMENTS)}")
    return value


_SECRET_FIELDS = frozenset({"database_url", "pushgateway_password", "pushgateway_token"})


def _one_line(error: pydantic.ValidationError, cli: Mapping[str, Any]) -> str:
    problems = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else "?"
        name = f"--{field.replace('_', '-')}" if field in cli else PREFIX + field.upper()
        shown = "" if field in _SECRET_FIELDS else f"={item.get('input')!r}"
        message = str(item["msg"]).removeprefix("Value error, ")
        problems.append(f"{name}{shown}: {message}")
    return "invalid setting " + "; ".join(problems)


def load_settings(cli: Mapping[str, Any] | None = None, cwd: Path | None = None) -> Settings:
    """Load and validate the settings of one run.

    Args:
        cli: settings given as command-line flags, by field name; ``None`` values
            are ignored.
        cwd: where ``.env`` and ``.env.<environment>`` are looked up (default: the
            working directory).

    Returns:
        The validated settings.

    Raises:
        ConfigError: an unknown ``MIGRATION_*`` variable, an unknown environment,
            or a value that fails validation; the message is one line.

    """
    environ = os.environ  # pydantic-settings reads os.environ itself
    cwd = Path.cwd() if cwd is None else cwd
    flags = {key: value for key, value in (cli or {}).items() if value is not None}

    _check_unknown(list(environ), "the environment")
    dotenv_file = cwd / ".env"
    dotenv = _read_dotenv(dotenv_file) if dotenv_file.exists() else {}
    _check_unknown(list(dotenv), str(dotenv_file))
    environment = _resolve_environment(flags.get("environment"), environ, dotenv)
    env_specific = cwd / f".env.{environment}"
    env_specific_values = _read_dotenv(env_specific) if env_specific.exists() else {}
    _check_unknown(list(env_specific_values), str(env_specific))

    secrets_dir = environ.get("MIGRATION_SECRETS_DIR", DEFAULT_SECRETS_DIR)
    if "MIGRATION_SECRETS_DIR" in environ and not Path(secrets_dir).is_dir():
        raise ConfigError(f"MIGRATION_SECRETS_DIR={secrets_dir!r} is not a directory")
    if Path(secrets_dir).is_dir():
        _check_secret_files(Path(secrets_dir))

    given = dict(flags)  # what the command line said, before the resolved environment joins it
    flags["environment"] = environment
    try:
        settings = Settings(
            _env_file=(dotenv_file, env_specific),  # later files win
            _secrets_dir=secrets_dir if Path(secrets_dir).is_dir() else None,
            **flags,
        )
    except pydantic.ValidationError as error:
        raise ConfigError(_one_line(error, flags)) from None

    settings._cwd = cwd
    settings._secrets_dir = (secrets_dir, "environment" if "MIGRATION_SECRETS_DIR" in environ else "default")
    files = ((env_specific, env_specific_values), (dotenv_file, dotenv))
    settings._sources = _sources_of(given, environ, Path(secrets_dir), files, environment)
    return settings


def _sources_of(
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    secrets_dir: Path,
    dotenv_files: tuple[tuple[Path, Mapping[str, Any]], ...],
    environment: str,
) -> dict[str, str]:
    """Where each setting's value came from, in the documented precedence (for ``config``)."""
    secret_files = {e.name.lower(): e for e in secrets_dir.iterdir()} if secrets_dir.is_dir() else {}
    sources: dict[str, str] = {}
    for name in Settings.model_fields:
        variable = PREFIX + name.upper()
        found = [f"--{name.replace('_', '-')}"] if name in flags else []
        found += ["environment"] if any(key.upper() == variable for key in environ) else []
        found += [f"secret file {secret_files[variable.lower()]}"] if variable.lower() in secret_files else []
        found += [str(path) for path, values in dotenv_files if any(key.upper() == variable for key in values)]
        found += [f"the {environment} default"] if name in ENVIRONMENT_DEFAULTS.get(environment, {}) else []
        sources[name] = (found or ["default"])[0]
    return sources
