"""User-facing errors and the one guard that turns any error into one line.

Every error caused by the user's input or environment is an :class:`NfviError` whose message
names the problem and the fix. :func:`guard` (used by the CLI, by Hydra's error reporting and
around every job) prints such an error as one line on stderr and exits with the error's
``exit_code`` (2 unless it says otherwise); ``NFVI_DEBUG=1`` or ``HYDRA_FULL_ERROR=1`` shows
the traceback instead. The Python API (:func:`nfvi.run`) raises instead of exiting.

No torch and no Hydra imports here: ``nfvi --help`` must stay fast.
"""

from __future__ import annotations

import contextvars
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_USAGE = 2


class NfviError(Exception):
    """An error caused by the user's input or environment; printed as one line by the CLI."""

    exit_code = EXIT_USAGE


class ConfigError(NfviError):
    """A configuration value that cannot be used."""


class DataError(NfviError):
    """Data that is missing, unreadable or malformed."""


class CheckpointError(NfviError):
    """A checkpoint that is missing, corrupt or incompatible."""


class DeviceError(NfviError):
    """A device that is requested but not available."""


#: set by the Python API: errors are raised (as NfviError) instead of printed and exited
RAISE = contextvars.ContextVar("nfvi_raise", default=False)


def debug_enabled() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in ("NFVI_DEBUG", "HYDRA_FULL_ERROR"))


def fail(message: str, code: int = EXIT_USAGE) -> None:
    """Print ``error: message`` and exit (or raise :class:`NfviError` under the API)."""
    if RAISE.get():
        raise NfviError(message)
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


@contextmanager
def guard() -> Iterator[None]:
    """The one error guard: any exception becomes one line and a non-zero exit."""
    try:
        yield
    except Exception as ex:
        if debug_enabled():
            raise
        if RAISE.get():
            if isinstance(ex, NfviError):
                raise
            raise NfviError(one_line(ex)) from ex
        fail(one_line(ex), getattr(ex, "exit_code", EXIT_USAGE))


def _hydra_missing_option(text: str, rest: list[str]) -> str | None:
    m = re.search(r"Could not find '([^']+)'", text)
    if not (m and rest and rest[0].startswith("Available options")):
        return None
    opts = []
    for ln in rest[1:]:
        if ln.startswith("Config search path"):
            break
        opts.append(ln)
    group = m.group(1).split("/")[0]
    return f"unknown option '{m.group(1)}'; choose {group}= one of: {', '.join(opts)}"


def _omegaconf_cause(text: str, cause: BaseException) -> str:
    c_lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
    key = next((ln.split(":", 1)[1].strip() for ln in c_lines if ln.startswith("full_key")), "")
    if re.match(r"Key '[^']+' (is )?not in", c_lines[0]):
        return (f"unknown key '{key}'; nfvi train --cfg job lists the keys "
                "(misspelt? a group is chosen with group=option)")
    where = f" (key {key})" if key else ""
    return f"{text}: {c_lines[0]}{where}; fix the value (nfvi train --cfg job shows the config)"


def one_line(ex: BaseException) -> str:
    """A single line naming the problem and, where we know it, the fix."""
    if isinstance(ex, NfviError):
        return " ".join(ln.strip() for ln in str(ex).splitlines() if ln.strip())
    lines = [ln.strip() for ln in str(ex).splitlines() if ln.strip()]
    text = lines[0] if lines else type(ex).__name__
    missing = _hydra_missing_option(text, lines[1:])
    if missing:
        return missing
    cause = ex.__cause__
    if cause is not None and type(cause).__module__.startswith("omegaconf") and str(cause):
        return _omegaconf_cause(text, cause)
    if type(ex).__module__.startswith(("hydra", "omegaconf")):
        return " ".join(lines) or text
    return f"{type(ex).__name__}: {text} (set NFVI_DEBUG=1 for the traceback)"
