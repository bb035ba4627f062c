import atexit
import copy
import fcntl
import functools
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import command_server
from fairseq_config import training_config


# Under pytest-xdist (scripts/test.sh) each worker, and every command it starts, gets its share of
# the cores: torch's thread pools would otherwise oversubscribe them several times over.
def _thread_settings(workers):
    """The variables that give each of ``workers`` test processes its share of the cores."""
    if workers <= 1:
        return {}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = str(max(1, cores // workers))
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.update(_thread_settings(_WORKERS))
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHARED = ROOT.parent / "shared" / "data"
USER_DIR = str(ROOT / "one_layer_lottery")


class _CommandServer:
    """tests/command_server.py, started with one environment; see run_command."""

    def __init__(self, env, folder):
        self.folder = folder
        self.socket = str(folder / "socket")
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "command_server.py"), self.socket],
                                     cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(folder / "server.log", "wb"), bufsize=0)
        self.ready = False

    def wait_ready(self):
        if not self.ready:
            fd = self.proc.stdout.fileno()
            if not select.select([fd], [], [], 300)[0] or os.read(fd, 64) != b"ready\n":
                raise RuntimeError(f"the command server did not start:\n{(self.folder / 'server.log').read_text()[-3000:]}")
            self.ready = True
        return self.socket

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


class _SharedServer:
    """A server that pytest-xdist's controller started for every test process, and stops."""

    def __init__(self, socket):
        self.socket = socket

    def wait_ready(self):
        deadline = time.monotonic() + 300
        while not os.path.exists(self.socket + ".ready"):
            if time.monotonic() > deadline:
                log = Path(self.socket).parent / "server.log"
                raise RuntimeError(f"the shared command server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        return self.socket

    def close(self):
        pass


# {environment digest: socket} of the shared servers, from the controller to its test processes.
SHARED_SERVERS_VARIABLE = "TEST_COMMAND_SERVERS"
_SERVERS = {}


def _stop_servers():
    for server in _SERVERS.values():
        server.close()


atexit.register(_stop_servers)


def _server(env):
    """The command server for ``env`` (started now if there is none: it imports while the caller goes on)."""
    key = tuple(sorted(command_server.server_environment(env).items()))
    if key not in _SERVERS:
        shared = json.loads(os.environ.get(SHARED_SERVERS_VARIABLE, "{}")).get(command_server.environment_digest(env))
        if shared:
            _SERVERS[key] = _SharedServer(shared)
        else:
            server_env = {k: v for k, v in env.items() if k not in command_server.IGNORED_VARIABLES}
            _SERVERS[key] = _CommandServer(server_env, Path(tempfile.mkdtemp(prefix="command-server-")))
    return _SERVERS[key]


def _start_shared_servers(workers):
    """In pytest-xdist's controller: the servers of the two environments every test process starts
    commands in (run_cli's, and the one with warnings not silenced), started once for all of them."""
    base = dict(os.environ, **_thread_settings(workers))
    sockets = {}
    for env in (cli_env(base), unsilenced_env(base)):
        sockets[command_server.environment_digest(env)] = _server(env).socket
    os.environ[SHARED_SERVERS_VARIABLE] = json.dumps(sockets)


def commands_served():
    return os.environ.get("TEST_FRESH_PROCESSES") != "1"


def run_command(cmd, *, cwd=None, env=None, input=None, timeout=600):
    """``subprocess.run(cmd, capture_output=True, text=True, ...)`` for one of fairseq's console
    scripts or ``python -m <module>``: run in a fork of a command server (tests/command_server.py)
    that has imported torch and fairseq once, which spares each command the 4 to 5 s of a fresh
    interpreter's imports; the fairseq commands that command starts with subprocess.call or
    subprocess.run are served too. One server per environment a test asks for; other commands, and every command when
    TEST_FRESH_PROCESSES=1, run as fresh processes. Tests about what a program prints while it
    imports (start-up noise, warnings) start fresh processes themselves."""
    cmd = [str(c) for c in cmd]
    env = dict(os.environ if env is None else env)
    request = command_server.command_request(cmd, str(cwd or ROOT), env)
    if request is None or not commands_served():
        return subprocess.run(cmd, cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout, env=env,
                              input=input, stdin=None if input is not None else subprocess.DEVNULL)
    socket_path = _server(env).wait_ready()
    request["env"] = command_server.served_environment(env, socket_path)
    with tempfile.TemporaryFile("w+") as stdin, tempfile.TemporaryFile("w+", errors="replace") as out, \
            tempfile.TemporaryFile("w+", errors="replace") as err:
        stdin.write(input or "")
        stdin.flush()
        stdin.seek(0)
        try:
            status = command_server.request_command(socket_path, request, [f.fileno() for f in (stdin, out, err)],
                                                    timeout)
        except TimeoutError:
            raise subprocess.TimeoutExpired(cmd, timeout) from None
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, status, out.read(), err.read())


def cli_env(base=None):
    """The environment of the commands the tests start: ``base`` (this process's), warnings silenced."""
    return dict(os.environ if base is None else base, PYTHONWARNINGS="ignore")


def unsilenced_env(base=None):
    """The environment users run the tools in: ``base`` (this process's), warnings not silenced."""
    return {k: v for k, v in (os.environ if base is None else base).items() if k != "PYTHONWARNINGS"}


# The files that take longest, longest first: scripts/test.sh hands out whole files, in this order
# and then the rest, so the two workers end together rather than one waiting on a long file.
LONGEST_FILES = ("test_study.py", "test_data_scripts.py", "test_pretrained.py", "test_docs_commands.py",
                 "test_configs.py", "test_train_scripts.py", "test_distributed.py", "test_setup_offline.py",
                 "test_resume.py", "test_gpu_check.py")


def pytest_addoption(parser):
    parser.addoption("--whole-machine-tests", choices=("run", "defer", "only"), default="run",
                     help="the tests marked whole_machine: run them with the others (run), leave them out "
                          "(defer) or run only them (only); scripts/test.sh defers them, then runs them alone")


def pytest_ignore_collect(collection_path, config):
    # --whole-machine-tests only: a test file whose text never names the marker holds none of those
    # tests, and is not imported (the run that has one test to do spares the others' collection)
    if (config.getoption("whole_machine_tests") == "only" and collection_path.suffix == ".py"
            and collection_path.name.startswith("test_")):
        return "whole_machine" not in collection_path.read_text(encoding="utf-8")
    return None


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
    mode = config.getoption("whole_machine_tests")
    if mode != "run":
        kept, left_out = [], []
        for item in items:
            marked = item.get_closest_marker("whole_machine") is not None
            (kept if marked == (mode == "only") else left_out).append(item)
        if left_out:
            config.hook.pytest_deselected(items=left_out)
            items[:] = kept


def pytest_configure(config):
    if commands_served():
        # in-process code that starts fairseq commands (the pretrained model's check) gets them served too
        command_server.install_call_forwarding(lambda env: _server(env).wait_ready())
        if hasattr(config, "workerinput"):  # a pytest-xdist worker
            _server(cli_env())  # run_cli's server imports while this worker collects the tests
        elif getattr(config.option, "numprocesses", None):  # pytest-xdist's controller, before its workers start
            _start_shared_servers(config.option.numprocesses)
        elif config.getoption("whole_machine_tests") == "only" and not config.option.collectonly:
            # the server their commands run in imports while the tests are collected
            _server(cli_env())


def run_cli(name, *args, cwd=None, check=True, timeout=600):
    """Run one of fairseq's console scripts from this environment; returns the CompletedProcess."""
    cmd = [str(BIN / name), *map(str, args)]
    env = cli_env()
    proc = run_command(cmd, cwd=cwd or ROOT, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


@functools.lru_cache(maxsize=None)
def _served_venv():
    """A folder that stands in for the environment (VENV) the scripts take their tools from: its
    fairseq console scripts and python send fairseq's and the plugin's programs to a command server
    (command_server.shim), its other tools are the environment's own."""
    venv = Path(tempfile.mkdtemp(prefix="served-venv-"))
    (venv / "bin").mkdir()
    for tool in BIN.iterdir():
        if tool.name.startswith("fairseq-") or tool.name == "python":
            shim = venv / "bin" / tool.name
            shim.write_text(f"#!{sys.executable} -S\nimport sys\nsys.path.insert(0, {str(ROOT / 'tests')!r})\n"
                            f"import command_server\ncommand_server.shim({str(tool)!r})\n")
            shim.chmod(0o755)
        else:
            (venv / "bin" / tool.name).symlink_to(tool)
    atexit.register(shutil.rmtree, venv, ignore_errors=True)
    return venv


def served_tools(env):
    """``env`` for a shell command whose fairseq and plugin commands are served: the stand-ins of
    _served_venv first on its PATH, and its server's socket (``env`` itself when not served)."""
    if not commands_served():
        return env
    env = dict(env, PATH=f"{_served_venv() / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return command_server.served_environment(env, _server(env).wait_ready())


def run_script(name, *args, env=None, check=True, timeout=600):
    """Run one of scripts/*.sh with bash (one worker, one thread); returns the CompletedProcess. The
    fairseq and plugin commands it runs are served (see run_command) unless ``env`` names a VENV."""
    full_env = dict(os.environ, PYTHONWARNINGS="ignore", WORKERS="1", OMP_NUM_THREADS="1", **(env or {}))
    if commands_served() and "VENV" not in (env or {}):
        full_env = served_tools(dict(full_env, VENV=str(_served_venv())))
    proc = subprocess.run(["bash", str(ROOT / "scripts" / name), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-5000:]}")
    return proc


def built_once(tmp_path_factory, name, make):
    """The folder ``name`` that ``make(folder)`` fills once per test session, shared by the
    pytest-xdist workers: the first to ask builds it under a lock, the others wait and reuse it.
    Tests only read it."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's folder, which holds each worker's own
    folder, done = base / f"shared-{name}", base / f"shared-{name}.done"
    with open(base / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


def _preprocess_sample(out, *flags):
    data = ROOT / "data" / "sample"
    run_cli("fairseq-preprocess", "--source-lang", "de", "--target-lang", "en", "--trainpref", data / "train",
            "--validpref", data / "valid", *flags, "--destdir", out, "--workers", "1")


@pytest.fixture(scope="session")
def sample_bin(tmp_path_factory):
    """The project's sample corpus, binarized by the real fairseq-preprocess (separate dictionaries)."""
    return built_once(tmp_path_factory, "sample-bin",
                      lambda out: _preprocess_sample(out, "--testpref", ROOT / "data" / "sample" / "test"))


@pytest.fixture(scope="session")
def sample_bin_joined(tmp_path_factory):
    return built_once(tmp_path_factory, "sample-bin-joined", lambda out: _preprocess_sample(out, "--joined-dictionary"))


def build(data_dir, *flags, arch="one_layer_transformer_iwslt_de_en"):
    """(model, task, cfg) built through fairseq's own argument parsing, as fairseq-train does."""
    from fairseq import tasks

    argv = (str(data_dir), "--user-dir", USER_DIR, "--arch", arch, *map(str, flags))
    cfg = copy.deepcopy(training_config(argv))
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    return model, task, cfg


SMALL = ("--encoder-embed-dim", 32, "--encoder-ffn-embed-dim", 64, "--encoder-layers", 3,
         "--decoder-layers", 2, "--encoder-attention-heads", 4, "--decoder-attention-heads", 4)


def train_in_process(data_dir, *flags, updates=3, configure=None, arch="one_layer_transformer_iwslt_de_en"):
    """A fairseq Trainer built as fairseq-train builds it (CPU), after ``updates`` real updates.

    ``configure(cfg)`` may change the parsed config before the trainer is built (e.g. to set
    ``common.bf16`` without the ``--tpu`` that fairseq's argparse path attaches to ``--bf16``).
    Returns (trainer, the logging outputs of each update).
    """
    from fairseq.trainer import Trainer

    base = ("--cpu", "--optimizer", "adam", "--lr", "5e-3", "--max-tokens", "1000", "--num-workers", "0")
    model, task, cfg = build(data_dir, *base, *flags, arch=arch)
    if configure is not None:
        configure(cfg)
    trainer = Trainer(cfg, task, model, task.build_criterion(cfg.criterion))
    batches = trainer.get_train_iterator(epoch=1).next_epoch_itr(shuffle=True)
    logs = []
    for _, sample in zip(range(updates), batches):
        logs.append(trainer.train_step([sample]))
    return trainer, logs


# A small one_layer_transformer for the subnetwork tests (compact / dense export, analytics).
TINY = ("--encoder-embed-dim", 64, "--encoder-ffn-embed-dim", 128, "--encoder-layers", 2, "--decoder-layers", 2,
        "--encoder-attention-heads", 4, "--decoder-attention-heads", 4, "--share-decoder-input-output-embed",
        "--seed", 3)


@pytest.fixture(scope="session")
def trained_sample(sample_bin, tmp_path_factory):
    """TINY trained 30 real updates on the sample corpus by fairseq-train, with --tensorboard-logdir
    and mask statistics every 10 updates. Attributes: data, checkpoint, tensorboard, log."""
    from types import SimpleNamespace

    def train(out):
        proc = run_cli("fairseq-train", sample_bin, "--user-dir", USER_DIR, "--arch",
                       "one_layer_transformer_iwslt_de_en", *TINY, "--optimizer", "adam", "--lr", 5e-3,
                       "--max-tokens", 2000, "--max-update", 30, "--save-dir", out / "ckpt", "--no-epoch-checkpoints",
                       "--log-format", "simple", "--log-interval", 10, "--mask-log-interval", 10,
                       "--tensorboard-logdir", out / "tb", "--num-workers", 0)
        (out / "train.log").write_text(proc.stdout + proc.stderr)

    out = built_once(tmp_path_factory, "trained-sample", train)
    return SimpleNamespace(data=sample_bin, checkpoint=out / "ckpt" / "checkpoint_last.pt", tensorboard=out / "tb",
                           log=(out / "train.log").read_text())


GENERATE = ("--beam", 5, "--batch-size", 128, "--max-len-b", 30, "--required-batch-size-multiple", 1)


def hypotheses(stdout):
    """{sentence id: line} of the H- lines of fairseq-generate / fairseq-interactive output."""
    import re

    return {int(m.group(1)): m.group(0) for m in re.finditer(r"^H-(\d+)\t.*$", stdout, flags=re.M)}


@pytest.fixture(scope="session")
def trained_sample_generate(trained_sample, tmp_path_factory):
    """fairseq-generate's stdout for trained_sample's checkpoint (test set, beam 5, --user-dir)."""
    def generate(out):
        (out / "stdout").write_text(run_cli("fairseq-generate", trained_sample.data, "--user-dir", USER_DIR,
                                            "--path", trained_sample.checkpoint, *GENERATE).stdout)

    return (built_once(tmp_path_factory, "trained-sample-generate", generate) / "stdout").read_text()


@pytest.fixture(scope="session")
def trained_transformer(sample_bin, tmp_path_factory):
    """fairseq's own `transformer` (no plugin), tiny, trained 2 updates on the sample test split by
    fairseq-train, saved after each: (checkpoint_1_1.pt, checkpoint_1_2.pt), two checkpoints of one run."""
    def train(save):
        run_cli("fairseq-train", sample_bin, "--arch", "transformer", "--encoder-embed-dim", 16, "--decoder-embed-dim",
                16, "--encoder-ffn-embed-dim", 32, "--decoder-ffn-embed-dim", 32, "--encoder-layers", 1,
                "--decoder-layers", 1, "--encoder-attention-heads", 2, "--decoder-attention-heads", 2, "--optimizer",
                "adam", "--lr", 1e-3, "--max-tokens", 1000, "--train-subset", "test", "--max-update", 2,
                "--save-interval-updates", 1, "--no-epoch-checkpoints", "--save-dir", save, "--num-workers", 0)

    save = built_once(tmp_path_factory, "trained-transformer", train)
    return save / "checkpoint_1_1.pt", save / "checkpoint_1_2.pt"
