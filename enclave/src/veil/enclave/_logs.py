"""Log lines for ``veil serve``: the usual text, or one JSON object per line.

``[logging] format = "json"`` (or the command's ``--log-format json``) writes each record as a
JSON object on one line: ``time`` (RFC 3339, UTC), ``level``, ``logger``, ``message``, and
``exception`` (the traceback) when there is one, plus ``trace_id``/``span_id`` when the record
was logged inside a traced call. The message is the same text as in text mode: what may be
logged is decided where it is logged (tests/test_log_hygiene.py), not here.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

from veil.enclave._telemetry import LogFormat, current_trace_ids
from veil.sdk.errors import ConfigError

__all__ = ["TEXT_FORMAT", "JsonFormatter", "configure_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        ids = current_trace_ids()
        if ids is not None:
            doc["trace_id"], doc["span_id"] = ids
        return json.dumps(doc, ensure_ascii=True, default=str)


def configure_logging(
    level: str = "INFO", log_format: LogFormat | str = LogFormat.TEXT, stream: TextIO | None = None
) -> logging.Handler:
    """Send the root logger's records at ``level`` and above to ``stream`` (stderr) in
    ``log_format``, replacing its handlers; raise ``ConfigError`` for an unknown level or format.
    """
    name = level.upper()
    if name not in _LEVELS:
        raise ConfigError(f"log level {level!r} is not one of {', '.join(_LEVELS)}")
    try:
        fmt = LogFormat(log_format) if isinstance(log_format, str) else log_format
    except ValueError:
        raise ConfigError(
            f"log format {log_format!r} is not one of {', '.join(f.value for f in LogFormat)}"
        ) from None
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(
        JsonFormatter() if fmt is LogFormat.JSON else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(name)
    return handler
