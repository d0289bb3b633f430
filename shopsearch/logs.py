"""Logging of the `shopsearch` logger tree: structured (one JSON object per line on stderr,
`extra=` fields included: the web app's, and a diagnostic stream's) or readable one-line text
(what a command-line user reads among a command's own lines)."""
from __future__ import annotations

import json
import logging
import sys

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

#: the forms configure() takes; "auto" is decided by choose_format()
LOG_FORMATS = ("auto", "text", "json")


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, the `extra=` fields and any exception."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
               "logger": record.name, "msg": record.getMessage()}
        out.update(_extras(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """One readable line per record, as the CLI's own warnings read: `warning: MESSAGE (key: value;
    ...)`, the `extra=` fields in the parentheses, an exception as its last line."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{record.levelname.lower()}: {record.getMessage()}"
        extras = _extras(record)
        if extras:
            line += " (" + "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in extras.items()) + ")"
        if record.exc_info and record.exc_info[1] is not None:
            e = record.exc_info[1]
            line += f" [{type(e).__name__}: {e}]"
        return " ".join(line.split("\n"))


def choose_format(log_format: str, level: str, command: str | None) -> str:
    """"text" or "json" for a run of `command` (a CLI subcommand's name): `log_format` unless it
    is "auto"; then JSON for the web app (`serve`, whose records log collectors read) and for
    a diagnostic level (INFO, DEBUG), readable text for the warnings of every other command."""
    if log_format != "auto":
        return log_format
    number = logging.getLevelName(level.upper())
    if command == "serve" or (isinstance(number, int) and number < logging.WARNING):
        return "json"
    return "text"


def configure(level: str = "WARNING", json_lines: bool = True) -> None:
    """Idempotent set-up of the `shopsearch` logger tree: JSON lines, or one-line text."""
    logger = logging.getLogger("shopsearch")
    logger.setLevel(level.upper())
    for h in list(logger.handlers):
        logger.removeHandler(h)
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    logger.addHandler(h)
    logger.propagate = False
