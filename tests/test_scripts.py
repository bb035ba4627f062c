import subprocess

from conftest import BIN, ROOT


def test_shell_scripts_pass_shellcheck():
    scripts = sorted(str(p) for p in (ROOT / "scripts").glob("*.sh")) + [str(ROOT / ".ci" / "run")]
    proc = subprocess.run([str(BIN / "shellcheck"), *scripts], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_setup_is_idempotent_and_fast_when_done():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "up to date" in proc.stdout
