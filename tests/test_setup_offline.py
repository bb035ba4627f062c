"""scripts/setup.sh installs from a wheelhouse without network, and keeps a torch that is already there.

The script under test is the real one, run on a stand-in checkout: its requirement lists (the real
scripts/requirements.sh) are served by small stand-in wheels built here, fairseq-fixed by a stand-in
source distribution that pip compiles on the spot, and setuptools / wheel by the real packages of this
environment, repacked. pip's index points at a local server that records every request: there must be
none.
"""
import base64
import hashlib
import http.server
import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import ROOT

REAL = {"setuptools", "wheel", "packaging"}  # needed to build (wheel needs packaging); repacked from here


def requirement_specs():
    """(torch spec, the other wheel specs, the fairseq spec) from the real scripts/requirements.sh."""
    out = subprocess.run(
        ["bash", "-c", 'source scripts/requirements.sh; echo "$torch_spec"; echo "$fairseq_spec"; '
                       'printf "%s\\n" "${base_reqs[@]}" "${reqs[@]}"'],
        cwd=ROOT, capture_output=True, text=True, check=True, env={"PATH": os.environ["PATH"]}).stdout.split("\n")
    return out[0], [s for s in out[2:] if s], out[1]


def version_for(spec: str) -> str:
    """A version that ``spec`` accepts: its pin, its lower bound, or 1.0."""
    req = Requirement(spec)
    candidates = [s.version for s in req.specifier if s.operator in ("==", ">=", "~=")] + ["1.0"]
    version = next(v for v in candidates if req.specifier.contains(v, prereleases=True))
    return version


def _record_line(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def write_wheel(folder: Path, name: str, version: str, files: dict) -> Path:
    """A pure-Python wheel holding ``files`` (path -> text) and its metadata."""
    dist = f"{canonicalize_name(name).replace('-', '_')}-{version}"
    info = f"{dist}.dist-info"
    files = {**files,
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        record = []
        for member, text in files.items():
            data = text.encode()
            z.writestr(member, data)
            record.append(_record_line(member, data))
        z.writestr(f"{info}/RECORD", "\n".join(record + [f"{info}/RECORD,,"]) + "\n")
    return path


def repack_installed(folder: Path, name: str) -> Path:
    """A wheel of the pure-Python distribution ``name`` as it is installed here."""
    dist = importlib.metadata.distribution(name)
    base = Path(dist.locate_file(""))
    info = f"{canonicalize_name(dist.metadata['Name']).replace('-', '_')}-{dist.version}.dist-info"
    skip = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
    path = folder / f"{canonicalize_name(dist.metadata['Name']).replace('-', '_')}-{dist.version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        record = []
        for f in dist.files:
            rel = str(f)
            if rel.startswith("..") or "__pycache__" in rel or rel.endswith(".pyc") or Path(rel).name in skip:
                continue
            data = (base / rel).read_bytes()
            member = rel if not rel.split("/")[0].endswith(".dist-info") else f"{info}/{Path(rel).name}"
            z.writestr(member, data)
            record.append(_record_line(member, data))
        z.writestr(f"{info}/RECORD", "\n".join(record + [f"{info}/RECORD,,"]) + "\n")
    return path


def write_fairseq_sdist(folder: Path, version: str) -> Path:
    """A source distribution that pip must build (setuptools, without build isolation)."""
    base = f"fairseq_fixed-{version}"
    files = {
        "pyproject.toml": '[build-system]\nrequires = ["setuptools", "wheel"]\nbuild-backend = "setuptools.build_meta"\n',
        "setup.py": f"from setuptools import setup\nsetup(name='fairseq-fixed', version='{version}', "
                    "packages=['fairseq'])\n",
        "fairseq/__init__.py": f"__version__ = '{version}'\n",
        "PKG-INFO": f"Metadata-Version: 2.1\nName: fairseq-fixed\nVersion: {version}\n",
    }
    path = folder / f"{base}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for member, text in files.items():
            data = text.encode()
            ti = tarfile.TarInfo(f"{base}/{member}")
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    return path


def torch_files(version):
    return {"torch/__init__.py": f"__version__ = {version!r}\n"}


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """(wheelhouse, stand-in checkout, the requirement specs) for the offline installs."""
    tmp = tmp_path_factory.mktemp("offline")
    torch_spec, specs, fairseq_spec = requirement_specs()
    wheelhouse = tmp / "wheelhouse"
    wheelhouse.mkdir()
    write_wheel(wheelhouse, "torch", version_for(torch_spec), torch_files(version_for(torch_spec)))
    for spec in specs:
        name = Requirement(spec).name
        if name in REAL:
            repack_installed(wheelhouse, name)
        else:
            module = canonicalize_name(name).replace("-", "_")
            write_wheel(wheelhouse, name, version_for(spec), {f"{module}_stand_in.py": ""})
    write_fairseq_sdist(wheelhouse, version_for(fairseq_spec))

    checkout = tmp / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    for script in ("setup.sh", "requirements.sh"):
        shutil.copy(ROOT / "scripts" / script, checkout / "scripts" / script)
    (checkout / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "one_layer_lottery"\nversion = "0.1.0"\n'
        '[tool.setuptools.packages.find]\ninclude = ["one_layer_lottery*"]\n')
    (checkout / "one_layer_lottery").mkdir()
    (checkout / "one_layer_lottery" / "__init__.py").write_text("import fairseq, torch  # noqa\n")
    return tmp, wheelhouse, checkout, (torch_spec, specs, fairseq_spec)


class IndexRecorder(http.server.BaseHTTPRequestHandler):
    requests = []

    def do_GET(self):
        IndexRecorder.requests.append(self.path)
        self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture
def index_server():
    IndexRecorder.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), IndexRecorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/simple", IndexRecorder.requests
    server.shutdown()


def run_setup(checkout, venv, index_url, **env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    full.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=index_url, PIP_NO_CACHE_DIR="1", PIP_RETRIES="0",
                PIP_DEFAULT_TIMEOUT="5", VENV=str(venv), PYTHON=sys._base_executable, **env)
    start = time.monotonic()
    proc = subprocess.run(["bash", str(checkout / "scripts" / "setup.sh")], capture_output=True, text=True, env=full,
                          cwd=checkout, timeout=600)
    return proc, time.monotonic() - start


def installed(venv, env=None):
    """{distribution: (version, location)} and torch's version and file, as the venv's python sees them."""
    code = ("import importlib.metadata as m, json, torch\n"
            "dists = {}\n"
            "for d in m.distributions():  # in sys.path order: the first one is the one imported\n"
            "    dists.setdefault(d.metadata['Name'].lower(), [d.version, str(d.locate_file(''))])\n"
            "print(json.dumps({'dists': dists, 'torch': [torch.__version__, torch.__file__]}))")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True,
                         env={"PATH": os.environ["PATH"], **(env or {})}, cwd=venv).stdout
    return json.loads(out)


def test_offline_install_from_a_wheelhouse_completes_a_venv_cut_short(stand_ins, index_server):
    """A venv whose creation was cut short (its python there, no pip, no bin/activate, which the README
    sources) is created again and completed, not taken as done; then everything installs from the
    wheelhouse alone. (A venv created from nothing: test_system_torch_is_kept_...)"""
    tmp, wheelhouse, checkout, (torch_spec, specs, fairseq_spec) = stand_ins
    index_url, requests = index_server
    venv = tmp / "cut-short"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (venv / "bin" / "activate").unlink()
    proc, _ = run_setup(checkout, venv, index_url, WHEELHOUSE=str(wheelhouse))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"setup: creating {venv}" in proc.stdout and (venv / "bin" / "activate").is_file()
    assert requests == []  # not one request to the (unreachable in real life) index
    seen = installed(venv)
    site = str(venv)
    assert seen["torch"][0] == version_for(torch_spec) and seen["torch"][1].startswith(site)
    for spec in specs + [fairseq_spec]:
        name = canonicalize_name(Requirement(spec).name)
        version, location = seen["dists"][name]
        assert Requirement(spec).specifier.contains(version, prereleases=True), spec
        assert location.startswith(site), (spec, location)
        if name not in REAL | {"setuptools", "pip"}:
            assert version == version_for(spec), spec  # the stand-in, not something else
    assert f"setup: torch {version_for(torch_spec)} fairseq {version_for(fairseq_spec)}" in proc.stdout

    again, seconds = run_setup(checkout, venv, index_url, WHEELHOUSE=str(wheelhouse))
    assert again.returncode == 0 and "is up to date" in again.stdout and seconds < 30
    assert requests == []


def test_system_torch_is_kept_and_the_rest_installs_offline(stand_ins, index_server):
    tmp, wheelhouse, checkout, (torch_spec, specs, fairseq_spec) = stand_ins
    index_url, requests = index_server
    # A CUDA build that the interpreter already imports (here through PYTHONPATH, as a cluster module does).
    system_site = tmp / "system-site"
    with zipfile.ZipFile(write_wheel(tmp, "torch", "2.7.0+cu126", torch_files("2.7.0+cu126"))) as z:
        z.extractall(system_site)
    venv = tmp / "with-system-torch"
    env = {"PYTHONPATH": str(system_site)}
    proc, _ = run_setup(checkout, venv, index_url, WHEELHOUSE=str(wheelhouse), USE_SYSTEM_TORCH="1", **env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"setup: creating {venv} (with the system's site-packages)" in proc.stdout  # from nothing
    assert "keeping torch 2.7.0+cu126" in proc.stdout
    assert requests == []
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    seen = installed(venv, env)
    # The wheelhouse's torch (2.13.0) was there to be picked: it was not.
    assert seen["torch"] == ["2.7.0+cu126", str(system_site / "torch" / "__init__.py")]
    assert not list((venv / "lib").glob("python*/site-packages/torch"))
    for spec in specs + [fairseq_spec]:
        name = canonicalize_name(Requirement(spec).name)
        assert Requirement(spec).specifier.contains(seen["dists"][name][0], prereleases=True), spec
    assert seen["dists"]["fairseq-fixed"][1].startswith(str(venv))  # compiled here from its source


def test_an_unusable_system_torch_is_refused_by_name(stand_ins, index_server, tmp_path):
    _, wheelhouse, checkout, _ = stand_ins
    index_url, requests = index_server
    old = tmp_path / "old-site"
    with zipfile.ZipFile(write_wheel(tmp_path, "torch", "2.4.1", torch_files("2.4.1"))) as z:
        z.extractall(old)
    proc, _ = run_setup(checkout, tmp_path / "venv", index_url, WHEELHOUSE=str(wheelhouse), USE_SYSTEM_TORCH="1",
                        PYTHONPATH=str(old))
    assert proc.returncode == 2 and "imports 2.4.1; this project needs torch >= 2.6" in proc.stderr
    assert not (tmp_path / "venv").exists()  # refused before a venv was made around it
    proc, _ = run_setup(checkout, tmp_path / "venv2", index_url, WHEELHOUSE=str(wheelhouse), USE_SYSTEM_TORCH="1")
    assert proc.returncode == 2 and "cannot import torch" in proc.stderr and not (tmp_path / "venv2").exists()
    proc, _ = run_setup(checkout, tmp_path / "venv3", index_url, WHEELHOUSE=str(tmp_path / "missing"))
    assert proc.returncode == 2 and "missing is not a directory" in proc.stderr
    assert requests == []
