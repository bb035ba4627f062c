"""The tests' command server (tests/command_server.py): a served command runs as its own program, ends
with its own status, and hands the fairseq commands it starts to the server (with
TEST_FRESH_PROCESSES=1 the same commands run fresh, with the same results)."""
import os
import signal
import sys

import pytest

import command_server
from conftest import cli_env, commands_served, run_command

PROGRAM = """
import os, signal, subprocess, sys
print(__name__, sys.argv[1:], os.getcwd(), os.environ["GREETING"], sys.stdin.read().strip(), sys.path[0])
sys.stdout.flush()
if sys.argv[1] == "signal":
    os.kill(os.getpid(), signal.SIGTERM)
if sys.argv[1] == "nested":
    with open("nested.log", "w") as log:
        status = subprocess.call([sys.executable, "-m", "fairseq_cli.preprocess", "--no-such-flag"], stdout=log,
                                 stderr=subprocess.STDOUT)
    print("nested", status, getattr(subprocess.call, "forwarded", False))
sys.exit(3)
"""


@pytest.fixture
def program(tmp_path):
    path = tmp_path / "program.py"
    path.write_text(PROGRAM)
    return path


def serve(program, tmp_path, *args):
    return run_command([sys.executable, program, *args], cwd=tmp_path, env=dict(cli_env(), GREETING="hello"),
                       input="from stdin\n")


def test_a_served_program_runs_as_its_own_program_and_ends_with_its_status(program, tmp_path):
    proc = serve(program, tmp_path, "plain", "two words")
    assert proc.returncode == 3 and proc.stderr == ""
    assert proc.stdout == f"__main__ ['plain', 'two words'] {tmp_path} hello from stdin {tmp_path}\n"


def test_a_signal_that_ends_a_served_program_is_its_status(program, tmp_path):
    proc = serve(program, tmp_path, "signal")
    assert proc.returncode == -signal.SIGTERM


def test_a_served_program_hands_its_fairseq_commands_to_the_server(program, tmp_path):
    proc = serve(program, tmp_path, "nested")
    assert proc.stdout.splitlines()[-1] == f"nested 2 {commands_served()}", proc.stdout + proc.stderr
    assert "unrecognized arguments: --no-such-flag" in (tmp_path / "nested.log").read_text()


def test_what_importing_fairseq_writes_into_the_environment_leaves_the_server_choice_alone():
    """Importing fairseq (scikit-learn, which it imports) writes KMP_ variables into this process's
    environment: the commands a test starts before and after that go to one server, while a
    variable the imports read still picks another."""
    import fairseq  # noqa: F401

    env = dict(os.environ)
    before = {k: v for k, v in env.items() if k not in command_server.SET_BY_IMPORTS}
    assert "KMP_DUPLICATE_LIB_OK" in env and "KMP_DUPLICATE_LIB_OK" not in before
    assert command_server.environment_digest(env) == command_server.environment_digest(before)
    assert command_server.environment_digest(dict(before, OMP_NUM_THREADS="7")) \
        != command_server.environment_digest(before)


def test_the_test_processes_share_the_servers_their_controller_started(tmp_path):
    """Under pytest-xdist the controller starts the servers of run_cli's environment (and of the one
    with warnings not silenced) once for all its test processes; a test process on its own starts
    its own."""
    program = tmp_path / "parents.py"
    program.write_text("import os\n"
                       "def parent(pid):\n"
                       "    return int(open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[1])\n"
                       "server = parent(os.getppid())  # the parent of the fork that serves the request\n"
                       "print(os.getppid(), parent(server))\n")
    proc = run_command([sys.executable, program], cwd=tmp_path, env=cli_env())
    parent, servers_parent = map(int, proc.stdout.split())
    if not commands_served():
        assert parent == os.getpid()
    elif os.environ.get("PYTEST_XDIST_WORKER"):
        assert servers_parent == os.getppid()  # the controller
    else:
        assert servers_parent == os.getpid()
