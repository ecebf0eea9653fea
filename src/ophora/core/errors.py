"""The project's one failure policy.

Errors a user can fix are `OphoraError`s, one kind each: a bad setting (`ConfigError`), a bad input file or
argument (`InputError`, with `MediaError` and `ModelError` for videos and models), an endpoint that cannot
be reached or answers nonsense (`EndpointError`). The CLI prints them as one line and exits 2.

Batch stages (curate's sources, prepare's clips, sample's videos) go on past a failing item: the item is
recorded with the exception's type and message (`failure_record`), its traceback goes to the log, and the
run finishes the rest. Exit codes: 0 when every item succeeded or was a content decision (a clip dropped by
a filter), 1 when some items failed (the outputs list them; a rerun retries them), 2 for an OphoraError
before or instead of any work, 130/143 after SIGINT/SIGTERM.
"""

from __future__ import annotations

import logging
import traceback

EXIT_OK, EXIT_PARTIAL, EXIT_ERROR = 0, 1, 2
LOG_FILE = "ophora.log"  # each command's debug log inside its output folder


class OphoraError(Exception):
    """A problem the user can fix (bad input, missing files, wrong settings)."""


class InputError(OphoraError):
    """A file, column or argument given by the user is missing or malformed."""


class ModelError(OphoraError):
    """A model folder or hub id cannot be loaded."""


class MediaError(OphoraError):
    """A video or subtitle file cannot be read or written."""


class ConfigError(OphoraError):
    """A configuration file, flag or override is invalid."""


class EndpointError(OphoraError):
    """An HTTP endpoint (LLM, VLM) failed or kept answering unusably after all retries."""


def failure_record(exc: BaseException, log: logging.Logger, item: str) -> dict[str, str]:
    """What a batch stage records for an item that raised `exc`: its type and message.

    An OphoraError is an expected failure (logged as a warning); anything else is logged as an error, with its
    traceback at debug level (the run's log file, `OUT/ophora.log`), so a bug in one item is diagnosable without
    stopping the others or flooding the console.
    """
    reason = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OphoraError):
        log.warning("%s: %s", item, reason)
    else:
        log.error("%s failed unexpectedly: %s: %s (traceback in the log file)", item, type(exc).__name__, reason)
        log.debug("traceback of %s:\n%s", item, "".join(traceback.format_exception(exc)).rstrip())
    return {"error_type": type(exc).__name__, "error": reason}
