"""Structured logs: one JSON object per line, or console lines on a TTY.

Every event has ``timestamp`` (UTC ISO-8601), ``level``, a dotted ``event``
name and the run-wide fields bound by :func:`bind_run`. Records of the
standard library (Alembic, SQLAlchemy) go through the same renderer; their
``event`` is the logger's dotted name and their text is in ``message``.
Every string value, at every level, passes :func:`redact_text`: the run's
known secrets, and anything shaped like a secret (a URL's password, a DSN's
``password=``), become ``***``. The result document, the termination message
and the metrics use the same function.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any, TextIO
from urllib.parse import quote, quote_plus

import structlog
from structlog.typing import EventDict, WrappedLogger

_secrets: set[str] = set()
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


# scheme://user:PASSWORD@ (greedy to the last @, so an unencoded @ in the password is covered too).
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/?#@\s]*):\S*@", re.IGNORECASE)
# SQL that sets a password: CREATE/ALTER ROLE|USER ... PASSWORD '...', MySQL's IDENTIFIED BY '...'.
_SQL_PASSWORD = re.compile(r"\b(?P<key>PASSWORD|IDENTIFIED\s+BY)(?P<eq>\s+)'(?:[^']|'')*'", re.IGNORECASE)
# key=value pairs of libpq DSNs and URL queries: password=..., sslpassword='...'.
_KEY_VALUE_SECRET = re.compile(
    r"\b(?P<key>password|passwd|pwd|sslpassword|secret|token|access_token|api_key)(?P<eq>\s*=\s*)"
    r"(?:'(?:[^'\\]|\\.)*'|\"[^\"]*\"|[^\s&'\",;)]+)",
    re.IGNORECASE,
)


def add_secret(secret: str | None) -> None:
    """Register a value (a password) that must never appear in any output, in any of its :func:`spellings`."""
    if secret:
        _secrets.update(spellings(secret))


def spellings(secret: str) -> set[str]:
    r"""Every form ``secret`` takes in the text a run may print, itself included.

    A password reaches messages through layers that each rewrite it: SQL quoting (``''``),
    DB-API ``%`` escaping (``%%``), URL encoding (upper- or lower-case escapes, ``+`` for a
    space), Python's ``repr()`` (``\\``, ``\'``, ``\xe4``), JSON (``\"``, ``\u00e4``) and a
    bytes ``repr()`` (``\xc3\xa4``). Each SQL-level form is spelled in each escaping.

    Returns:
        The non-empty spellings.
    """
    sql_forms = {secret, secret.replace("'", "''"), secret.replace("%", "%%")}
    sql_forms.add(secret.replace("'", "''").replace("%", "%%"))
    found: set[str] = set()
    for form in sql_forms:
        found |= _escapings(form)
    for safe in ("", "/", " +", "!$&'()*+,;=:"):  # what different URL builders leave unencoded
        for encoded in (quote(secret, safe=safe), quote_plus(secret, safe=safe)):
            found |= {encoded, re.sub(r"%[0-9A-F]{2}", lambda match: match.group().lower(), encoded)}
    return {spelling for spelling in found if spelling}


def _escapings(text: str) -> set[str]:
    """``text`` as Python string and bytes literals, JSON strings and ``unicode_escape`` write its body."""
    bodies = {
        text,
        repr(text)[1:-1],
        text.encode("unicode_escape").decode("ascii"),
        repr(text.encode("utf-8"))[2:-1],
        json.dumps(text)[1:-1],
        json.dumps(text, ensure_ascii=False)[1:-1],
    }
    # Inside a larger literal, the quote that delimits it comes out escaped and the other does not.
    unquoted = {body.replace("\\'", "'").replace('\\"', '"') for body in bodies}
    found = bodies | unquoted
    for body in unquoted:
        found |= {body.replace("'", "\\'"), body.replace('"', '\\"')}
    return found


def known_secrets() -> list[str]:
    """The values registered with :func:`add_secret`, longest first."""
    return sorted(_secrets, key=len, reverse=True)


def redact_text(text: str) -> str:
    """``text`` with every known secret and every secret-shaped part replaced by ``***``.

    Args:
        text: any message: ours, a driver's, a server's.

    Returns:
        The redacted text.
    """
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    text = _URL_PASSWORD.sub(r"\g<head>:***@", text)
    text = _SQL_PASSWORD.sub(r"\g<key>\g<eq>'***'", text)
    return _KEY_VALUE_SECRET.sub(r"\g<key>\g<eq>***", text)


def redact_value(value: Any) -> Any:
    """:func:`redact_text` applied to every string inside ``value`` (dicts and lists included)."""
    return _redact_value(value)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {key: _redact_value(item) for key, item in value.items()}
    elif isinstance(value, list | tuple):
        return [_redact_value(item) for item in value]
    return value


def _redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    return {key: _redact_value(value) for key, value in event_dict.items()}


def _name_foreign_event(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # A stdlib record's text becomes "message"; its logger's name is the event.
    event_dict["message"] = event_dict.get("event")
    event_dict["event"] = event_dict.pop("logger", "stdlib")
    return event_dict


def _leading_keys(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # timestamp, level and event first, so a line reads well before parsing.
    head = {key: event_dict.pop(key) for key in ("timestamp", "level", "event") if key in event_dict}
    return {**head, **event_dict}


def configure(*, level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Route structlog and standard-library logging to one stream and renderer.

    Args:
        level: ``debug``, ``info``, ``warning`` or ``error``. At ``debug``,
            SQLAlchemy logs each statement and Alembic logs its own progress.
        fmt: ``json``, ``console`` or ``auto`` (console on a TTY, else JSON).
        stream: where lines go (default: stdout).

    """
    stream = sys.stdout if stream is None else stream
    numeric = _LEVELS.get(level, logging.INFO)
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(default=str)
        # No local variables in tracebacks: they may hold connection secrets.
        exceptions: Any = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
        exceptions = structlog.processors.format_exc_info  # rendered before redaction

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_log_level,
            timestamper,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.add_log_level,
            timestamper,
            _name_foreign_event,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            exceptions,
            _redact,
            _leading_keys,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # Alembic's "Running upgrade ..." duplicates revision.applied; keep it for debug.
    logging.getLogger("alembic").setLevel(logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO if numeric <= logging.DEBUG else logging.WARNING)


class LineEvents(io.TextIOBase):
    """A text stream whose every line is a ``project.output`` event (see :func:`runner.drivers.project_code`).

    Args:
        stream: ``stdout`` or ``stderr``, the stream the project code wrote to.
    """

    def __init__(self, stream: str) -> None:
        super().__init__()
        self._stream = stream
        self._partial = ""

    def writable(self) -> bool:
        """Always: it is an output stream."""
        return True

    def write(self, text: str) -> int:
        """Log each complete line; keep the rest until the next write or :meth:`flush_partial`."""
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            get_logger().info("project.output", stream=self._stream, line=line.rstrip("\r"))
        return len(text)

    def flush_partial(self) -> None:
        """Log a last line that had no newline."""
        if self._partial:
            partial, self._partial = self._partial, ""
            get_logger().info("project.output", stream=self._stream, line=partial)


def bind_run(**fields: Any) -> None:
    """Add fields (run id, environment, host, command) to every later event."""
    structlog.contextvars.bind_contextvars(**fields)


def get_logger() -> structlog.stdlib.BoundLogger:
    """The runner's logger; events are named like ``lock.acquired``."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger("runner")
    return logger


@contextlib.contextmanager
def env_py_file_config_ignored() -> Iterator[None]:
    """Make ``logging.config.fileConfig`` a no-op while a project's env.py runs.

    The ``env.py`` that ``alembic init`` writes calls ``fileConfig()`` on the ini
    file, which would replace the runner's handlers and disable its loggers.
    env.py looks the function up when it runs, so replacing the attribute of
    :mod:`logging.config` for that time is enough.
    """
    import logging.config  # noqa: PLC0415  (only when an env.py runs)

    original = logging.config.fileConfig

    def ignored(*args: Any, **kwargs: Any) -> None:
        get_logger().debug("alembic.file_config_ignored", reason="the runner owns logging")

    logging.config.fileConfig = ignored
    try:
        yield
    finally:
        logging.config.fileConfig = original
