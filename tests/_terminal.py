"""Lines a fixture writes to pytest's terminal while it works, so a long setup is not taken for a hang."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable

import pytest


def terminal_line(config: pytest.Config) -> Callable[[str], None]:
    """A function that writes one line to pytest's terminal at once, even while the test's output is captured.

    Args:
        config: the session's config (``request.config``).

    Returns:
        ``write(line)``: through the terminal reporter with capturing suspended for the line; to stderr
            when the session has no terminal reporter (``-p no:terminal``).
    """
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")

    def write(line: str) -> None:
        if reporter is None:
            print(line, file=sys.stderr, flush=True)
            return
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            reporter.write_line(line)
            reporter.flush()

    return write
