"""Runs the tests' commands (fairseq's console scripts, ``python -m <module>``) in forks of one
process that has already imported torch and fairseq, which a fresh interpreter takes 4 to 5 s to do.

Started by conftest.run_command. It reads one JSON request per line on its stdin and answers on its
stdout with the child's pid, then with its exit status. The child becomes the command: the request's
working directory, environment, argv and sys.path[0], its stdin, stdout and stderr on the request's
files, and the command runs as the program's ``__main__``; it ends as that program would, through
the interpreter's own exit (exit status, uncaught errors, atexit handlers, flushing). Only the
imports below are shared (and the logging set-up that importing fairseq makes is undone for fairseq's
scripts, which set up their own first), so whatever a program does when it starts (the plugin's
``--user-dir`` import, fairseq_cli's logging set-up) still happens in each child.
"""
import json
import os
import runpy
import sys


def _preload():
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401  (torch.optim imports it on a model's first optimizer)

    import fairseq  # noqa: F401  (its models, tasks, criterions and optimizers)


def _become(request, logging_before):
    if request["script"]:
        # fairseq_cli sets up logging before it imports fairseq, whose text_to_speech task calls
        # logging.basicConfig when imported: undo that here, so the script's own set-up counts.
        import logging

        logging.root.handlers[:], level = logging_before
        logging.root.setLevel(level)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path, flags in ((0, request["stdin"], os.O_RDONLY),
                            (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        opened = os.open(path, flags, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    sys.argv = list(request["argv"])
    # sys.path[0] as the interpreter sets it: the script's folder, or the working directory for -m
    sys.path[0] = os.path.dirname(os.path.abspath(request["script"])) if request["script"] else os.getcwd()


def serve():
    """The server loop; returns the request in a forked child, None when its stdin closes."""
    requests = os.fdopen(os.dup(0), "r")
    answers = os.fdopen(os.dup(1), "w")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    import logging

    logging_before = (list(logging.root.handlers), logging.root.level)
    _preload()
    answers.write("ready\n")
    answers.flush()
    for line in requests:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            requests.close()
            answers.close()
            _become(request, logging_before)
            return request
        answers.write(json.dumps({"pid": pid}) + "\n")
        answers.flush()
        _, status = os.waitpid(pid, 0)
        answers.write(json.dumps({"status": os.waitstatus_to_exitcode(status)}) + "\n")
        answers.flush()
    return None


if __name__ == "__main__":
    command = serve()
    if command is not None:  # in the child: run it, and end as it ends
        if command["script"]:
            runpy.run_path(command["script"], run_name="__main__")
        else:
            runpy.run_module(command["module"], run_name="__main__", alter_sys=True)
