"""Console output of the command-line tools: results on stdout, warnings and errors on stderr.

A problem the user can act on (a bad file, a bad option) is a ``ToolError``: every tool prints it
as one line, ``<tool>: error: <message>``, and exits with status 2, as argparse does for usage
errors; fairseq's command lines print it the same way (fairseq_patches.py).
``ONE_LAYER_LOTTERY_DEBUG=1`` shows the traceback instead.
"""
import contextlib
import logging
import os
import sys

DEBUG_ENV = "ONE_LAYER_LOTTERY_DEBUG"
USAGE_ERROR = 2


class ToolError(ValueError):
    """A problem with the user's input, told in one line that names the file or the flag."""


def read_text(path, what: str, error: type = ToolError) -> str:
    """The UTF-8 text of ``path``; a file that cannot be read becomes ``error`` naming it and ``what``
    it should have been."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise error(f"{path}: cannot read {what} ({e.strerror})") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text, so not {what}") from None


def quiet_logging() -> None:
    """Only warnings and errors reach stderr, whatever importing fairseq did to logging (one of its
    modules sets the root logger to DEBUG, which lets every library's chatter through)."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")  # when nothing configured it yet
    logging.getLogger().setLevel(logging.WARNING)


def debugging() -> bool:
    """Whether ``ONE_LAYER_LOTTERY_DEBUG`` asks for tracebacks instead of one-line errors."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def print_error(tool: str, error: BaseException) -> None:
    """``<tool>: error: <message>`` on stderr, on one line whatever the message holds."""
    sys.stdout.flush()
    message = " ".join(str(error).split("\n")[0].split())  # one line, whatever the message held
    print(f"{tool}: error: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def tool_errors(tool: str):
    """Turn a ``ToolError`` raised inside into the tool's one-line error and exit status 2."""
    try:
        yield
    except ToolError as e:
        if debugging():
            raise
        print_error(tool, e)
        raise SystemExit(USAGE_ERROR) from None

