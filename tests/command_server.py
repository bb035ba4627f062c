"""Runs the tests' commands (fairseq's console scripts, ``python -m <module>``) in forks of one
process that has already imported torch and fairseq, which a fresh interpreter takes 4 to 5 s to do.

Started by conftest.run_command with the environment its commands get; it says "ready" on its
stdout (and with a file SOCKET.ready, for other processes) once imported and ends when its stdin
closes. A client connects to its Unix socket and sends one JSON request line with three file
descriptors (the command's stdin, stdout and stderr); the server answers with the command's pid,
then with its exit status. Each request is served at once
by a fork that forks the command and waits for it, so a served program's own commands (the study
runner's fairseq-train and fairseq-generate, the GPU check's steps) are served too while it waits
for them: a served program's ``subprocess.call`` or ``subprocess.run`` of fairseq's or the plugin's
programs in the same environment is sent here (install_call_forwarding).

The command becomes the request: working directory, environment, argv, sys.path[0] and its three
files, and it runs as the program's ``__main__``; it ends as that program would, through the
interpreter's own exit (exit status, uncaught errors, atexit handlers, flushing). Only the imports
below are shared (and the logging set-up that importing fairseq makes is undone for fairseq's
scripts, which set up their own first), so whatever a program does when it starts (the plugin's
``--user-dir`` import, fairseq_cli's logging set-up) still happens in each command.
"""
import array
import gc
import hashlib
import json
import os
import re
import runpy
import select
import signal
import socket
import subprocess
import sys
import traceback

# In a served command's environment: its server's socket, and a digest of the server's environment.
SOCKET_VARIABLE, DIGEST_VARIABLE = "TEST_COMMAND_SERVER", "TEST_COMMAND_SERVER_ENV"
IGNORED_VARIABLES = ("PYTEST_CURRENT_TEST", SOCKET_VARIABLE, DIGEST_VARIABLE)  # no part of the import state


# What importing torch and fairseq depends on: Python's, the thread pools' and torch's settings.
IMPORT_VARIABLES = re.compile(r"^(PYTHON|OMP_|MKL_|KMP_|OPENBLAS_|TORCH|CUDA|NCCL|LD_|HYDRA|FAIRSEQ|HOME$)")


# Set by what the process runs, not chosen by its caller: scikit-learn, which fairseq imports, sets
# the two KMP_ ones for Intel's OpenMP; torch's compiler writes down its default cache folder.
SET_BY_IMPORTS = ("KMP_DUPLICATE_LIB_OK", "KMP_INIT_AT_FORK", "TORCHINDUCTOR_CACHE_DIR")


def server_environment(env):
    """The part of ``env`` a server's imports depend on: commands that differ only elsewhere (a data
    folder, a save directory) share a server."""
    return {k: v for k, v in env.items() if IMPORT_VARIABLES.match(k) and k not in SET_BY_IMPORTS}


def environment_digest(env):
    return hashlib.sha256(json.dumps(sorted(server_environment(env).items())).encode()).hexdigest()


def served_environment(env, socket_path):
    """``env`` with the variables that send the fairseq commands started under it to ``socket_path``."""
    return dict(env, **{SOCKET_VARIABLE: socket_path, DIGEST_VARIABLE: environment_digest(env)})


def served_socket(env):
    """The socket of the server whose environment ``env`` is (served_environment), else None: a
    command in another environment (other threads, other warning filters) starts afresh."""
    if env.get(SOCKET_VARIABLE) and env.get(DIGEST_VARIABLE) == environment_digest(env):
        return env[SOCKET_VARIABLE]
    return None


def _preload():
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401  (torch.optim imports it on a model's first optimizer)

    import fairseq  # noqa: F401  (its models, tasks, criterions and optimizers)


def _become(request, fds, logging_before):
    if request["script"] or request["module"].startswith("fairseq_cli."):
        # fairseq_cli sets up logging before it imports fairseq, whose text_to_speech task calls
        # logging.basicConfig when imported: undo that here, so the program's own set-up counts.
        import logging

        logging.root.handlers[:], level = logging_before
        logging.root.setLevel(level)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in set(fds) - {0, 1, 2}:
        os.close(fd)
    sys.argv = list(request["argv"])
    # sys.path[0] as the interpreter sets it: the script's folder, or the working directory for -m
    sys.path[0] = os.path.dirname(os.path.abspath(request["script"])) if request["script"] else os.getcwd()
    if os.environ.get(SOCKET_VARIABLE):
        install_call_forwarding(served_socket)


def _receive(conn):
    """(request, its three file descriptors) from a new connection."""
    data, fds = b"", []
    while not data.endswith(b"\n"):
        chunk, ancillary, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(3 * array.array("i").itemsize))
        if not chunk:
            raise EOFError("the client closed the connection")
        data += chunk
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(array.array("i", payload[:len(payload) - len(payload) % array.array("i").itemsize]))
    return json.loads(data), fds


def _serve_one(conn, listener, answers, logging_before):
    """In the fork that serves one connection: fork the command and report on it. Returns the request
    in the command's process; never returns in the reporting one."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        listener.close()
        answers.close()
        request, fds = _receive(conn)
        pid = os.fork()
        if pid == 0:
            try:
                conn.close()
                _become(request, fds, logging_before)
            except BaseException:  # no command to run (a missing working directory): fail as a start would
                traceback.print_exc()
                os._exit(1)
            return request
        for fd in fds:
            os.close(fd)
        conn.sendall((json.dumps({"pid": pid}) + "\n").encode())
        _, status = os.waitpid(pid, 0)
        conn.sendall((json.dumps({"status": os.waitstatus_to_exitcode(status)}) + "\n").encode())
    except Exception:  # the client went away (killed, timed out): nothing to report to
        pass
    os._exit(0)


def serve(socket_path):
    """The server loop; returns the request in a command's process, None when its stdin closes."""
    answers = os.fdopen(os.dup(1), "w")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)
    os.close(null)
    import logging

    logging_before = (list(logging.root.handlers), logging.root.level)
    _preload()
    # What the imports made is never garbage: out of the collector's sight, a fork's collections
    # neither scan it nor copy the pages its reference counts share (about 0.8 s a command).
    gc.freeze()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the serving forks are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(16)
    open(socket_path + ".ready", "w").close()
    answers.write("ready\n")
    answers.flush()
    while True:
        readable, _, _ = select.select([listener, 0], [], [])
        if 0 in readable and not os.read(0, 4096):
            return None
        if listener in readable:
            conn, _ = listener.accept()
            sys.stdout.flush()
            sys.stderr.flush()
            if os.fork() == 0:
                return _serve_one(conn, listener, answers, logging_before)
            conn.close()


def request_command(socket_path, request, fds, timeout):
    """The exit status of ``request`` run by the server at ``socket_path`` with ``fds`` as its stdin,
    stdout and stderr (negative: the signal that ended it). TimeoutError after ``timeout`` s (None:
    no limit), when the command has been killed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(socket_path)
        conn.sendmsg([(json.dumps(request) + "\n").encode()],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        answers = conn.makefile("r")
        pid = json.loads(answers.readline())["pid"]
        if select.select([conn], [], [], timeout)[0]:
            line = answers.readline()
            if line:
                return json.loads(line)["status"]
            raise RuntimeError("the command server ended before the command did")
        os.kill(pid, signal.SIGKILL)
        answers.readline()
        raise TimeoutError


def command_request(argv, cwd, env):
    """The request for ``argv`` if it is one of fairseq's console scripts, ``python -m module`` or
    ``python script.py``, else None."""
    bin_dir = os.path.dirname(sys.executable)
    if argv[0].startswith(os.path.join(bin_dir, "fairseq-")):
        return {"script": argv[0], "module": None, "argv": list(argv), "cwd": cwd, "env": env}
    if argv[:2] == [sys.executable, "-m"] and len(argv) > 2:
        return {"script": None, "module": argv[2], "argv": ["-m", *argv[3:]], "cwd": cwd, "env": env}
    if argv[0] == sys.executable and len(argv) > 1 and argv[1].endswith(".py"):
        return {"script": argv[1], "module": None, "argv": argv[1:], "cwd": cwd, "env": env}
    return None


def _forwarded(request):
    """Whether a program's own command is sent to the server: fairseq's and the plugin's programs."""
    if request is None:
        return False
    if request["module"] is None:
        return os.path.basename(request["script"]).startswith("fairseq-")
    return request["module"].startswith(("fairseq_cli.", "one_layer_lottery."))


def _fd(stream, default):
    if stream is None:
        return default
    return stream if isinstance(stream, int) else stream.fileno()


def install_call_forwarding(socket_for):
    """Make ``subprocess.call`` and ``subprocess.run`` of fairseq's console scripts and of ``python -m``
    fairseq_cli or one_layer_lottery modules (as the study runner starts fairseq-train, the GPU check
    its steps) run by the server ``socket_for(env)`` names; calls that capture output or pass other
    options, and those for which it names none, start a process as before."""
    if getattr(subprocess.run, "forwarded", False):
        return
    fresh = {"call": subprocess.call, "run": subprocess.run}

    def status_or_none(args, stdin, stdout, stderr, env, cwd, timeout):
        env = dict(os.environ if env is None else env)
        argv = [os.fspath(a) for a in args] if isinstance(args, (list, tuple)) and args else None
        request = command_request(argv, os.fspath(cwd or os.getcwd()), env) if argv else None
        if not _forwarded(request) or {subprocess.PIPE, subprocess.DEVNULL} & {stdin, stdout, stderr}:
            return None
        path = socket_for(env)
        if path is None:
            return None
        if hasattr(stdout, "flush"):
            stdout.flush()
        out = _fd(stdout, 1)
        fds = [_fd(stdin, 0), out, out if stderr == subprocess.STDOUT else _fd(stderr, 2)]
        request["env"] = served_environment(env, path)
        try:
            return request_command(path, request, fds, timeout)
        except TimeoutError:
            raise subprocess.TimeoutExpired(args, timeout) from None

    def call(args, *more, stdin=None, stdout=None, stderr=None, env=None, cwd=None, timeout=None, **others):
        status = None if more or others else status_or_none(args, stdin, stdout, stderr, env, cwd, timeout)
        if status is None:
            return fresh["call"](args, *more, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd,
                                 timeout=timeout, **others)
        return status

    def run(args, *more, stdin=None, stdout=None, stderr=None, env=None, cwd=None, timeout=None, check=False,
            **others):
        status = None if more or others else status_or_none(args, stdin, stdout, stderr, env, cwd, timeout)
        if status is None:
            return fresh["run"](args, *more, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd,
                                timeout=timeout, check=check, **others)
        if check and status != 0:
            raise subprocess.CalledProcessError(status, args)
        return subprocess.CompletedProcess(args, status)

    call.forwarded = run.forwarded = True
    subprocess.call, subprocess.run = call, run


def shim(real):
    """A stand-in for the program ``real`` (a fairseq console script or the environment's python) in
    a folder that scripts take their tools from: sends the command to the server when it is one of
    fairseq's or the plugin's programs and its environment is the server's, else runs ``real``."""
    argv = [real, *sys.argv[1:]]
    request = command_request(argv, os.getcwd(), dict(os.environ))
    path = served_socket(os.environ) if _forwarded(request) else None
    if path is None:
        os.execv(real, argv)
    status = request_command(path, request, [0, 1, 2], None)
    if status < 0:
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    sys.exit(status)


if __name__ == "__main__":
    command = serve(sys.argv[1])
    if command is not None:  # in the command's process: run it, and end as it ends
        if command["script"]:
            runpy.run_path(command["script"], run_name="__main__")
        else:
            runpy.run_module(command["module"], run_name="__main__", alter_sys=True)
