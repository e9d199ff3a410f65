"""The extension's log lines on the WebUI console at the host's default logging setup.

A1111 1.10 configures logging only when asked (``modules/logging_config.py`` setup_logging, called from
``modules/launch_utils.py``: with ``--loglevel`` or ``SD_WEBUI_LOG_LEVEL`` it gives the root logger a handler and
that level; Forge @dfdcbab and reForge @3b56b26 keep it). By default nothing is configured, so Python's last-resort
handler shows WARNING and above only, and a distill's held-out figures, the λ file a run used and why a sampler is
not offered never reach the console. When the host set no level, ``show_own_logs`` gives the extension's own
loggers (``dode_webui``, ``dode_core``) a stderr handler and the INFO level; the root logger and every other logger
are left as they are. When the user chose a level, the host's setup decides, as for any other logger.
"""

from __future__ import annotations

import logging
import sys

OWN_LOGGERS = ("dode_webui", "dode_core")
FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"  # the host's own format (setup_logging)
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


class ConsoleHandler(logging.StreamHandler):
    """Writes to the ``sys.stderr`` of the moment (the host, or a test, may replace it after the extension loads)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def show_own_logs(host_level: str | None, names=OWN_LOGGERS) -> bool:
    """Make INFO lines of the loggers ``names`` visible on the console when the host set no log level
    (``host_level``: its ``--loglevel`` / ``SD_WEBUI_LOG_LEVEL``, None or "" when not given). Idempotent (Reload UI
    runs the extension again). Returns whether it did."""
    if host_level:
        return False
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(handler, ConsoleHandler) for handler in logger.handlers):
            handler = ConsoleHandler()
            handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # a handler the root may get later must not print the same line again
    return True
