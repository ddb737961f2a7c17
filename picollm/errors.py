"""Errors a user can fix: the library raises a :class:`PicoError` whose message is the one line the user reads.

:func:`picollm.cli.run_cli` prints that line and exits with :data:`EXIT_USAGE`, because a traceback is about our
code, not the user's mistake.
"""

from __future__ import annotations

import re

# Secrets in URLs and messages: ``user:PASSWORD@`` and ``?password=`` (and its kin: ``sslpassword=``, ``?token=``).
_USERINFO = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^:/@\s]*:)(?P<password>[^@\s]*)(?P<tail>@)")
_QUERY_SECRET = re.compile(r"(?P<head>[?&;]\w*(?:password|passwd|pwd|secret|token|api_key)=)[^&;\s'\"]*", re.IGNORECASE)


def mask_url(text: str) -> str:
    """Replace passwords with ``***`` in URLs or whole messages (``user:PASSWORD@``, ``?password=``)."""
    text = _USERINFO.sub(lambda m: f"{m['head']}***{m['tail']}", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['head']}***", text)


class PicoError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class ConfigError(PicoError):
    """A config key is unknown, mistyped or out of range."""


class DataError(PicoError):
    """A data source is missing, empty, unreadable or unreachable."""


class StorageError(PicoError):
    """A sweep's storage URL is malformed or unreachable."""


EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
