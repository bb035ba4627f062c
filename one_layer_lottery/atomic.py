"""The one way this package writes a file: a unique temporary file next to it, then renamed.

Readers never see a half-written file: until the rename the previous file (or none) is in place.
An output that is one of the command's inputs, a directory, or in a directory that is missing or
cannot be written is refused before anything is written, in one line that names it.
"""
import contextlib
import os
import re
import signal
import tempfile
import threading

from .console import ToolError


class OutputError(ToolError):
    """An output path that cannot be written, or that would destroy an input."""


def check_output(path, inputs=()) -> None:
    """Raise OutputError unless ``path`` can be written without touching any of ``inputs``.

    An input is matched by inode (``os.path.samefile``), so another name of the same file (a
    relative path, a symbolic or a hard link) is refused too.
    """
    path = os.fspath(path)
    if not path:
        raise OutputError("the output path is empty")
    if os.path.isdir(path) or path.endswith(os.sep):
        raise OutputError(f"{path}: names a directory; the output must be a file")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise OutputError(f"{path}: cannot write it: the directory {directory} does not exist")
    for source in inputs:
        if os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source):
            raise OutputError(f"{path}: is one of the inputs ({os.fspath(source)}); writing it would destroy "
                              "that input (choose another output name)")


def output_directory(path) -> str:
    """Create the output directory ``path`` (and its parents) if needed; OutputError if it cannot be."""
    path = os.fspath(path)
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{path}: is a file; the output must be a directory") from None
    except OSError as e:
        raise OutputError(f"{path}: cannot create the output directory ({e.strerror})") from None
    return path


class Terminated(BaseException):
    """SIGTERM arrived while a file was being written (raised so that the temporary file is removed)."""


@contextlib.contextmanager
def _sigterm_as_exception():
    """Inside the block, SIGTERM raises Terminated where the process would have died at once; after the
    clean-up the process dies of the signal as it would have. Other handlers are left in place."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def stop(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def temporary_name_pattern(path) -> "re.Pattern":
    """The names of ``atomic_output``'s temporary files for ``path``: ``.<name>.<pid>.<random>.tmp``."""
    return re.compile(rf"^\.{re.escape(os.path.basename(os.fspath(path)))}\.(\d+)\.\w+\.tmp$")


def _remove_orphans(path: str, directory: str) -> None:
    """Remove the temporary files for ``path`` that a killed process left (its pid is gone)."""
    pattern = temporary_name_pattern(path)
    for name in os.listdir(directory):
        found = pattern.match(name)
        if found and not _alive(int(found.group(1))):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(directory, name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def _new_file_mode(path: str) -> int:
    """The mode ``open(path, "w")`` would give: the existing file's, or 0o666 less the umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def atomic_output(path, inputs=()):
    """Yields a new temporary file's name in ``path``'s directory to write; on success it is flushed to
    disk and replaces ``path`` in one step.

    ``check_output(path, inputs)`` runs first. On any failure, Ctrl-C or SIGTERM the temporary file
    is removed and an existing ``path`` is left untouched. Only a kill -9 or a power cut leaves a
    temporary file (``.<name>.<pid>.<random>.tmp``) behind, and the next write of ``path`` removes it
    once its process is gone. No other file is ever touched.
    """
    path = os.fspath(path)
    check_output(path, inputs)
    directory = os.path.dirname(os.path.abspath(path))
    with _sigterm_as_exception():
        try:
            _remove_orphans(path, directory)
            handle, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.{os.getpid()}.", suffix=".tmp",
                                           dir=directory)
        except OSError as e:
            raise OutputError(f"{path}: cannot write in {directory} ({e.strerror})") from None
        try:
            os.close(handle)
            yield tmp
            with open(tmp, "rb") as f:  # on disk before it takes the name
                os.fsync(f.fileno())
            os.chmod(tmp, _new_file_mode(path))
            check_output(path, inputs)  # the inputs may have moved while it was written
            os.replace(tmp, path)
        finally:
            if os.path.lexists(tmp):
                os.remove(tmp)


def write_text(path, text: str, inputs=()) -> None:
    """``text`` into ``path`` as UTF-8, through ``atomic_output``."""
    with atomic_output(path, inputs) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
