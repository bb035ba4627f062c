import os
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


def test_the_test_command_runs_the_whole_machine_tests_apart_and_every_other_test_before():
    """scripts/test.sh runs the suite twice: without the whole_machine tests (test processes side by
    side), then only those (alone); together the two runs hold every test once."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    runs = {mode: subprocess.Popen([str(BIN / "python"), "-m", "pytest", "-p", "no:cacheprovider", "--collect-only",
                                    "-q", "--whole-machine-tests", mode, "tests/test_pretrained.py"],
                                   cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for mode in ("run", "defer", "only")}
    collected = {}
    for mode, proc in runs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        collected[mode] = [line for line in out.splitlines() if "::" in line]
    shipped = "tests/test_pretrained.py::test_the_shipped_model_scores_the_test_bleu_its_result_file_records"
    assert collected["only"] == [shipped]
    assert sorted(collected["defer"] + collected["only"]) == sorted(collected["run"]) and len(collected["run"]) > 10
    script = (ROOT / "scripts" / "test.sh").read_text()
    assert script.index("--whole-machine-tests defer") < script.index("--whole-machine-tests only")
