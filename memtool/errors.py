"""Errors that map to documented exit codes (see README "Exit codes").

Library code raises these; the CLI turns them into one line on stderr and the exit code below.
"""

EXIT_OK = 0
EXIT_RUNTIME = 1  # something failed while running
EXIT_USAGE = 2  # bad arguments or bad input (missing file, malformed checkpoint, ...)
EXIT_RESOURCE = 3  # out of memory / resources


class MemtoolError(Exception):
    """A failure with a one-line message meant for the user."""

    exit_code = EXIT_RUNTIME


class UsageError(MemtoolError):
    """Bad input: arguments, paths, files. Nothing was written."""

    exit_code = EXIT_USAGE


class ResourceError(MemtoolError):
    """Out of memory (host or device) or another exhausted resource."""

    exit_code = EXIT_RESOURCE
