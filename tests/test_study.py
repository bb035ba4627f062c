"""The study runner end to end on the sample corpus: result files, skipping, resuming, failures,
table and figure from the result files alone, broken result files reported by name."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from conftest import ROOT, run_cli, run_command
from one_layer_lottery import fairseq_logs
from one_layer_lottery.checkpoints.dump_embeddings import embedding_tables
from one_layer_lottery.study import embeddings, report, results
from one_layer_lottery.study.__main__ import main as study_cli_main
from one_layer_lottery.study.spec import StudyError, cli_flags, load

TINY_SHAPE = {"encoder-embed-dim": 64, "encoder-ffn-embed-dim": 128, "encoder-layers": 2, "decoder-layers": 2,
              "decoder-embed-dim": 64, "decoder-ffn-embed-dim": 128, "encoder-attention-heads": 4,
              "decoder-attention-heads": 4, "share-all-embeddings": True}


SENTENCES = 60  # the first of the sample corpus's valid and test sentences: cheap validation BLEU and decoding


@pytest.fixture(scope="module")
def joined_bin(tmp_path_factory):
    """The sample corpus (its valid and test sets cut to SENTENCES), binarized; its text in text/."""
    out = tmp_path_factory.mktemp("study-bin")
    text = out / "text"
    text.mkdir()
    for name in ("train.de", "train.en", "valid.de", "valid.en", "test.de", "test.en"):
        lines = (ROOT / "data" / "sample" / name).read_text().splitlines(keepends=True)
        (text / name).write_text("".join(lines if name.startswith("train") else lines[:SENTENCES]))
    run_cli("fairseq-preprocess", "--source-lang", "de", "--target-lang", "en", "--joined-dictionary",
            "--trainpref", text / "train", "--validpref", text / "valid", "--testpref", text / "test",
            "--destdir", out, "--workers", "1")
    return out


def write_study(folder, data, experiments):
    doc = {"title": "tiny", "data": str(data), "references": str(data / "text" / "test.en"),
           "results": "results", "work": "work", "reference_experiment": "dense",
           "train": {**TINY_SHAPE, "optimizer": "adam", "lr": 0.005, "max-tokens": 2000, "max-update": 20,
                     "no-epoch-checkpoints": True, "validate-interval": 1000, "validate-interval-updates": 10,
                     "save-interval-updates": 10, "keep-interval-updates": 1, "eval-bleu": True,
                     "eval-bleu-args": '{"beam": 2, "max_len_b": 20}', "best-checkpoint-metric": "bleu",
                     "maximize-best-checkpoint-metric": True, "log-format": "simple", "log-interval": 5,
                     "num-workers": 0},
           "generate": {"gen-subset": "test", "beam": 2, "batch-size": 128, "max-len-b": 20,
                        "required-batch-size-multiple": 1},
           "models": {"dense": {"arch": "transformer_iwslt_de_en"},
                      "one-layer": {"arch": "one_layer_transformer_iwslt_de_en", "init": "signed_constant"}},
           "experiments": experiments}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def study_cli(*args, timeout=600):
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    return run_command([sys.executable, "-m", "one_layer_lottery.study", *map(str, args)], timeout=timeout, env=env,
                       cwd=ROOT)


def study_main(capsys, *args):
    """The study command line in this process, for the commands that run no training (table, plot):
    a CompletedProcess with its exit status, stdout and stderr."""
    capsys.readouterr()
    try:
        code = study_cli_main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["study", *args], code, out, err)


@pytest.fixture(scope="module")
def dense_done(joined_bin, tmp_path_factory):
    """The tiny study, with its dense run finished: (folder, study file, the run's process)."""
    folder = tmp_path_factory.mktemp("study")
    path = write_study(folder, joined_bin, [
        {"name": "dense", "about": "trained", "model": "dense"},
        {"name": "small", "about": "one layer", "model": "one-layer", "seeds": [1, 2],
         "flags": {"prune-ratio": 0.5}},
        {"name": "small+emb", "about": "dense-s1's embeddings", "model": "one-layer",
         "embeddings_from": "dense-s1", "flags": {"embed-no-mask": True}},
        {"name": "small-lr1e-3", "about": "lr probe", "model": "one-layer", "probe": True,
         "embeddings_from": "dense-s1", "flags": {"embed-no-mask": True, "lr": 0.001}}])
    proc = study_cli("run", path, "dense")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return folder, path, proc


@pytest.fixture(scope="module")
def finished(dense_done):
    """dense_done, and small-s1 finished too."""
    folder, path, _ = dense_done
    proc = study_cli("run", path, "small-s1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return folder, path, proc


def check_fields(result, run_id):
    assert result["id"] == run_id and result["seed"] == 1
    assert [v["update"] for v in result["valid"]] == [10, 20]
    assert all(v["bleu"] is not None and v["loss"] > 0 for v in result["valid"])
    test = result["test"]
    assert test["sentences"] == SENTENCES and 0 <= test["bleu_tokenised"] <= 100
    assert test["sacrebleu_signature"].startswith("nrefs:1|case:mixed")
    assert test["checkpoint_update"] in (10, 20) and test["length_ratio"] > 0
    assert result["train"]["updates"] == 20 and result["train"]["train_words_per_s"] > 0
    assert result["commit"]["commit"] and "--seed" in result["command"]
    # paths from the study's root: nothing about the machine it ran on
    assert not [a for a in result["command"] if os.path.isabs(a)], result["command"]
    assert result["command"][0] == os.path.relpath(result["command"][0], ".")
    curve = result["train_curve"]
    assert [c["update"] for c in curve] == [5, 10, 15, 20] and all(c["loss"] > 0 for c in curve)
    assert result["embeddings"] is None and result["probe"] is False


def test_a_dense_run_writes_every_field(dense_done):
    folder, _, proc = dense_done
    dense = results.read(str(folder / "results" / "dense-s1.json"))
    check_fields(dense, "dense-s1")
    assert dense["train"]["params_frozen"] == 0 and dense["train"]["params_trained"] > 0
    assert dense["compact_bytes"] is None and not (folder / "work" / "dense-s1" / "subnetwork.olls").exists()
    assert "small-s1" not in proc.stdout  # only the runs asked for


def test_a_one_layer_run_writes_every_field(finished):
    folder, _, proc = finished
    small = results.read(str(folder / "results" / "small-s1.json"))
    check_fields(small, "small-s1")
    # the one-layer run's compact subnetwork file, beside its checkpoints
    assert small["compact_bytes"] == (folder / "work" / "small-s1" / "subnetwork.olls").stat().st_size > 0
    # the one-layer model trains only scores: as many as there are frozen weights it masks, at most
    assert small["train"]["params_frozen"] > 0 and small["flags"]["prune-ratio"] == 0.5
    assert "small-s2" not in proc.stdout and "dense-s1" not in proc.stdout  # only the runs asked for


@pytest.fixture(scope="module")
def embeddings_taken(dense_done):
    """dense_done, and small+emb-s1 (dense-s1's embeddings) finished too: its run's process."""
    _, path, _ = dense_done
    proc = study_cli("run", path, "small+emb-s1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_a_run_records_the_embeddings_it_takes(dense_done, embeddings_taken):
    folder, _, _ = dense_done
    assert "dense-s1: done" in embeddings_taken.stdout and "dense-s1: training" not in embeddings_taken.stdout
    table = folder / "results" / "dense-s1.embeddings.npz"
    first = results.read(str(folder / "results" / "small+emb-s1.json"))
    dense = results.read(str(folder / "results" / "dense-s1.json"))
    assert first["embeddings"] == {"run": "dense-s1", "checkpoint_update": dense["test"]["checkpoint_update"],
                                   "table": "results/dense-s1.embeddings.npz", "sha256": embeddings.digest(str(table))}
    assert "work/small+emb-s1/embeddings.encoder.txt" in first["command"]
    # the kept table holds the checkpoint's rows
    tables = embedding_tables(str(folder / "work" / "dense-s1" / "checkpoints" / "checkpoint_best.pt"))
    with np.load(table, allow_pickle=False) as kept:
        assert np.array_equal(kept["encoder"], tables["encoder"][1].numpy())
        assert list(kept["encoder_tokens"]) == tables["encoder"][0] and "decoder" not in kept.files


@pytest.fixture(scope="module")
def probe_without_checkpoints(dense_done, embeddings_taken, tmp_path_factory):
    """The study's result files and the study file, copied without work/ (no checkpoint of dense-s1),
    and its probe (which takes dense-s1's embeddings) run there: (folder, its process)."""
    folder, path, _ = dense_done
    copy = tmp_path_factory.mktemp("study-copy")
    shutil.copytree(folder / "results", copy / "results")
    shutil.copy(path, copy / "study.yaml")
    return copy, study_cli("run", copy / "study.yaml", "small-lr1e-3")


def test_the_kept_embeddings_are_enough_once_the_checkpoint_is_gone(dense_done, probe_without_checkpoints):
    folder, _, _ = dense_done
    copy, proc = probe_without_checkpoints
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dense-s1: done" in proc.stdout and "dense-s1: training" not in proc.stdout
    assert not (copy / "work" / "dense-s1").exists()
    probe = results.read(str(copy / "results" / "small-lr1e-3-s1.json"))
    dense = results.read(str(folder / "results" / "dense-s1.json"))
    assert probe["embeddings"] == {"run": "dense-s1", "checkpoint_update": dense["test"]["checkpoint_update"],
                                   "table": "results/dense-s1.embeddings.npz",
                                   "sha256": embeddings.digest(str(folder / "results" / "dense-s1.embeddings.npz"))}


def test_a_probe_records_its_validation_and_never_decodes_the_test_set(probe_without_checkpoints, tmp_path, capsys):
    folder, proc = probe_without_checkpoints
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = results.read(str(folder / "results" / "small-lr1e-3-s1.json"))
    bleu, update = results.best_validation(result)
    assert f"small-lr1e-3-s1: probe: best validation BLEU {bleu} at update {update}, test set not scored" in proc.stdout
    assert "scoring the test set" not in proc.stdout and not (folder / "work" / "small-lr1e-3-s1" / "generate.log").exists()
    assert result["probe"] is True and result["test"] is None and result["compact_bytes"] is None
    assert [v["update"] for v in result["valid"]] == [10, 20] and result["flags"]["lr"] == 0.001
    copy = tmp_path / "copy"
    shutil.copytree(folder / "results", copy / "results")
    shutil.copy(folder / "study.yaml", copy / "study.yaml")
    table = study_main(capsys, "table", copy / "study.yaml")
    assert table.returncode == 0, table.stderr
    tested, probes = table.stdout.split("Probes (validation only; the test set is not scored):")
    assert "small-lr1e-3" not in tested and "| dense |" in tested
    last = [v["bleu"] for v in result["valid"]][-1]
    assert f"| small-lr1e-3 | lr probe | 1 | {bleu:.2f} | {update} | {last:.2f} |" in probes
    assert study_main(capsys, "plot", copy / "study.yaml", copy / "fig.png").returncode == 0  # without the probe
    # a result that is not a probe must have its test scores
    broken = dict(result, probe=False)
    (copy / "results" / "small-lr1e-3-s1.json").write_text(json.dumps(broken))
    with pytest.raises(results.ResultError, match="partial result, missing test.bleu_tokenised"):
        results.read(str(copy / "results" / "small-lr1e-3-s1.json"))


def _chosen(folder, copy, lr=0.001, work=True):
    """``folder``'s study copied to ``copy`` with its probe made a tested experiment at ``lr``."""
    shutil.copytree(folder / "results", copy / "results", dirs_exist_ok=True)
    if work:
        shutil.copytree(folder / "work", copy / "work")
    doc = yaml.safe_load((folder / "study.yaml").read_text())
    probe = next(e for e in doc["experiments"] if e["name"] == "small-lr1e-3")
    probe.update(probe=False, about="chosen on validation", flags=dict(probe["flags"], lr=lr))
    (copy / "study.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return copy / "study.yaml"


def test_a_probe_made_tested_scores_its_own_training_once(probe_without_checkpoints, tmp_path_factory, capsys):
    folder, _ = probe_without_checkpoints
    probed = results.read(str(folder / "results" / "small-lr1e-3-s1.json"))
    chosen = tmp_path_factory.mktemp("chosen")  # as deep as folder: the recorded relative paths stay the same
    path = _chosen(folder, chosen)
    log = chosen / "work" / "small-lr1e-3-s1" / "train.log"
    before = log.read_text()
    proc = study_main(capsys, "run", path, "small-lr1e-3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "small-lr1e-3-s1: a probe, now tested: scoring its test set once" in proc.stdout
    assert "small-lr1e-3-s1: training" not in proc.stdout and log.read_text() == before  # not trained again
    result = results.read(str(chosen / "results" / "small-lr1e-3-s1.json"))
    assert result["probe"] is False and result["test"]["sentences"] == SENTENCES
    assert result["test"]["checkpoint_update"] == results.best_validation(probed)[1]
    assert result["compact_bytes"] > 0 and result["about"] == "chosen on validation"
    for key in ("valid", "train", "train_curve", "embeddings", "command", "commit", "flags"):
        assert result[key] == probed[key], key
    assert result["wall_s"] > probed["wall_s"]  # its training's time, and the scoring's
    again = study_main(capsys, "run", path, "small-lr1e-3")
    assert again.returncode == 0 and "small-lr1e-3-s1: done" in again.stdout


@pytest.mark.parametrize("lr, work, says", [(0.002, True, "is a probe's result with other flags, seed or embeddings"),
                                            (0.001, False, "is a probe's result, but its training is no longer in")])
def test_a_probe_made_tested_needs_its_own_training(probe_without_checkpoints, tmp_path, capsys, lr, work, says):
    folder, _ = probe_without_checkpoints
    path = _chosen(folder, tmp_path / "chosen", lr, work)
    kept = (tmp_path / "chosen" / "results" / "small-lr1e-3-s1.json").read_text()
    proc = study_main(capsys, "run", path, "small-lr1e-3")
    assert proc.returncode == 1 and "small-lr1e-3-s1: error: small-lr1e-3-s1: " in proc.stdout
    assert says in proc.stdout and "move" in proc.stdout
    assert (tmp_path / "chosen" / "results" / "small-lr1e-3-s1.json").read_text() == kept


def test_second_run_skips_finished(finished):
    folder, path, _ = finished
    before = {p: p.stat().st_mtime_ns for p in (folder / "results").iterdir()}
    proc = study_cli("run", path, "dense-s1", "small-s1")
    assert proc.returncode == 0, proc.stderr
    assert "dense-s1: done" in proc.stdout and "small-s1: done" in proc.stdout
    assert "training" not in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in (folder / "results").iterdir()} == before


def test_killed_run_resumes_from_checkpoint_last(finished):
    folder, path, _ = finished
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "one_layer_lottery.study", "run", str(path), "small-s2"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    last = folder / "work" / "small-s2" / "checkpoints" / "checkpoint_last.pt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last.exists() and not (folder / "results" / "small-s2.json").exists()
    resumed = study_cli("run", path, "small-s2")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "small-s2: resuming" in resumed.stdout
    log = (folder / "work" / "small-s2" / "train.log").read_text()
    assert "Loaded checkpoint" in log and "num_updates 10" in log
    result = results.read(str(folder / "results" / "small-s2.json"))
    assert [v["update"] for v in result["valid"]] == [10, 20] and result["train"]["updates"] == 20
    assert result["train"]["train_wall_s"] >= 1  # fairseq's own wall reads 0 after a resume


def test_train_wall_time_sums_the_processes_of_a_resumed_log():
    config = "| INFO | fairseq_cli.train | {'_name': None}"
    log = "\n".join([
        "# fairseq-train ...", f"2026-01-01 10:00:00 {config}", "2026-01-01 10:00:05 | INFO | other",
        "2026-01-01 10:02:00 | INFO | train_inner | wall=120",
        "# fairseq-train ... (resumed)", f"2026-01-01 11:00:00 {config}",
        "2026-01-01 11:30:00 | INFO | train | epoch 001 | wall 0", "not a log line"])
    assert fairseq_logs.process_seconds(log) == 120 + 1800
    # a process killed before its first checkpoint, then one that starts with a line before the config dump
    notice = "| INFO | fairseq.tasks.text_to_speech | Please install tensorboardX"
    restarted = "\n".join([
        "# fairseq-train ...", f"2026-01-01 10:00:00 {notice}", f"2026-01-01 10:00:01 {config}",
        "2026-01-01 10:01:40 | INFO | train_inner | wall=99",
        "# fairseq-train ...", f"2026-01-01 11:00:00 {notice}", f"2026-01-01 11:00:01 {config}",
        "2026-01-01 11:20:00 | INFO | train | epoch 001 | wall 1199"])
    assert fairseq_logs.process_seconds(restarted) == 100 + 1200
    # a log fairseq-train wrote itself (no runner lines): each config dump starts a process
    plain = "\n".join(line for line in log.splitlines() if not line.startswith("# "))
    assert fairseq_logs.process_seconds(plain) == 120 + 1800
    assert fairseq_logs.process_seconds("no timestamps") == 0


def test_table_and_figure_from_result_files_alone(finished, tmp_path, capsys):
    folder, path, _ = finished
    copy = tmp_path / "copy"
    shutil.copytree(folder / "results", copy / "results")
    shutil.copy(path, copy / "study.yaml")  # no work/ folder: no checkpoints, no logs
    table = study_main(capsys, "table", copy / "study.yaml", "--out", copy / "table.md")
    assert table.returncode == 0, table.stderr
    dense = results.read(str(copy / "results" / "dense-s1.json"))["test"]["bleu_tokenised"]
    assert f"**{dense:.2f}**" in table.stdout and "% of dense" in table.stdout
    small_kib = results.read(str(copy / "results" / "small-s1.json"))["compact_bytes"] / 2**10
    assert f"| {small_kib:.0f} KiB |" in table.stdout and "| – |" in table.stdout  # dense: none
    assert (copy / "table.md").read_text() == table.stdout
    doc = copy / "doc.md"
    other = "<!-- study table: other -->\nkept\n<!-- /study table: other -->\n"
    doc.write_text("# Results\n<!-- study table: study -->\nold table\n<!-- /study table: study -->\n" + other)
    assert study_main(capsys, "table", copy / "study.yaml", "--into", doc).returncode == 0
    assert doc.read_text() == ("# Results\n<!-- study table: study -->\n" + table.stdout +
                               "<!-- /study table: study -->\n" + other)  # another study's table is left alone
    doc.write_text("no markers\n")
    unmarked = study_main(capsys, "table", copy / "study.yaml", "--into", doc)
    assert unmarked.returncode == 2 and "no '<!-- study table: study -->'" in unmarked.stderr
    assert doc.read_text() == "no markers\n"
    figure = study_main(capsys, "plot", copy / "study.yaml", copy / "fig.png")
    assert figure.returncode == 0, figure.stderr
    assert (copy / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_numbers(tmp_path):
    study = load(str(ROOT / "configs" / "study" / "multi30k.yaml"))

    def fake(run_id, name, seed, bleu):
        return {"id": run_id, "experiment": name, "seed": seed, "about": name, "flags": {}, "command": [],
                "commit": {}, "valid": [{"update": 100, "loss": 5.0, "nll_loss": 4.0, "bleu": bleu - 1}],
                "test": {"bleu_tokenised": bleu, "sacrebleu": bleu, "sacrebleu_signature": "sig",
                         "length_ratio": 1.0, "brevity_penalty": 1.0, "sentences": 3, "checkpoint_update": 100},
                "train": {"params_trained": 2e6, "params_frozen": 1e6, "train_wall_s": 600,
                          "train_words_per_s": 2000.0}, "train_curve": None, "embeddings": None,
                "wall_s": 700, "finished": "now"}

    rows = {"dense": [fake("dense-s1", "dense", 1, 30.0), fake("dense-s2", "dense", 2, 32.0)],
            "small": [fake("small-s1", "small", 1, 24.8)]}
    table = report.markdown(study, rows).splitlines()
    assert table[2].startswith("| dense | dense | 1, 2 (2 of 3) | 2.00M / 1.00M | 30.00 ± 1.41 | "
                               "**31.00 ± 1.41** (30.00 / 32.00) | 31.00 ± 1.41 | 100% | 1.00 ± 0.00 | 10 | 2000 |")
    assert "| **24.80** | 24.80 | 80% |" in table[3]
    assert "compact file" not in table[0]  # no run recorded one
    rows["small"][0]["compact_bytes"] = 3 * 2**20
    assert report.markdown(study, rows).splitlines()[3].endswith("| 2000 | 3072 KiB |")


@pytest.mark.parametrize("name, page", [("multi30k", "reproduction.md"), ("multi30k-long", "reproduction.md"),
                                        ("multi30k-methods", "beyond-the-paper.md")])
def test_the_pages_hold_the_tables_of_the_committed_results(name, page):
    study = load(str(ROOT / "configs" / "study" / f"{name}.yaml"))
    text = (ROOT / "docs" / page).read_text()
    begin, end = report.markers(study)
    table = text.split(begin + "\n", 1)[1].split(end, 1)[0]
    assert table == report.markdown(study, report.collect(study)), \
        f"docs/{page} is stale: run `python -m one_layer_lottery.study table configs/study/{name}.yaml --into docs/{page}`"


def test_committed_results_record_no_machine_paths():
    files = sorted((ROOT / "results").rglob("*.json"))
    assert len(files) >= 15
    for path in files:
        result = results.read(str(path))
        strings = [a for a in result["command"]] + [str(v) for v in result["flags"].values()]
        assert not [s for s in strings if os.path.isabs(s) or s.startswith("~")], path
        if result["embeddings"] is not None:
            assert result["embeddings"]["run"] in result["about"] and result["experiment"].endswith(
                ("+emb", "+emb-nomask")), path


@pytest.mark.parametrize("content, problem", [("{\"id\": ", "not valid JSON"), ("{\"id\": \"dense-s1\"}", "partial")])
def test_broken_result_reported_by_name(finished, tmp_path, capsys, content, problem):
    folder, path, _ = finished
    copy = tmp_path / "copy"
    shutil.copytree(folder / "results", copy / "results")
    shutil.copy(path, copy / "study.yaml")
    broken = copy / "results" / "dense-s1.json"
    broken.write_text(content)
    for proc in (study_main(capsys, "table", copy / "study.yaml"), study_cli("run", copy / "study.yaml", "dense-s1")):
        assert proc.returncode != 0
        assert str(broken) in proc.stdout + proc.stderr and problem in proc.stdout + proc.stderr
    assert broken.read_text() == content  # never overwritten


def test_failed_run_leaves_a_readable_error_and_no_result(joined_bin, tmp_path):
    path = write_study(tmp_path, joined_bin, [{"name": "dense", "model": "dense"},
                                             {"name": "broken", "model": "one-layer", "flags": {"init": "no_such"}}])
    proc = study_cli("run", path, "broken")
    assert proc.returncode == 1
    assert "broken-s1: error: fairseq-train failed" in proc.stdout and "no_such" in proc.stdout
    assert not (tmp_path / "results" / "broken-s1.json").exists()


def test_spec_layers_and_errors(tmp_path):
    study = load(str(ROOT / "configs" / "study" / "multi30k.yaml"))
    runs = {r.id: r for r in study.runs}
    assert {"dense-s3", "small-s3", "small+emb-s1", "wide-s1", "deep-s1", "paper-recipe-s1"} <= set(runs)
    recipe = cli_flags(runs["paper-recipe-s1"].flags)
    assert "--encoder-normalize-before" not in recipe and "--clip-norm" in recipe
    assert "--encoder-normalize-before" in cli_flags(runs["small-s1"].flags)
    assert runs["keep-30-s1"].flags["prune-ratio"] == 0.7 and runs["small+emb-s1"].embeddings_from == "dense-s1"
    bad = tmp_path / "bad.yaml"
    head = "data: x\nresults: r\nwork: w\n"
    for body, problem in (
            ("experiments:\n  - {name: a, flags: {seed: 3}}\n", "--seed is set by the runner"),
            ("experiments:\n  - {name: a, embeddings_from: z-s1}\n", "not a run of this study"),
            ("experiments:\n  - {name: a, probe: yes please}\n", "probe must be true or false"),
            ("reference_experiment: a\nexperiments:\n  - {name: a, probe: true}\n",
             "is not an experiment that scores the test set"),
            ("experiments:\n  - {name: a, probe: true}\n  - {name: b, embeddings_from: a-s1}\n",
             "takes embeddings from a-s1, a probe")):
        bad.write_text(head + body)
        with pytest.raises(StudyError, match=problem):
            load(str(bad))
    probe = load(str(ROOT / "configs" / "study" / "sample.yaml")).runs[0]
    assert probe.probe is False  # experiments are tested unless they say otherwise


def test_the_methods_study_shares_the_600_update_studys_runs():
    """configs/study/multi30k-methods.yaml reads dense and paper-init from the 600-update study's result
    files: the same folders and data, and every run both name is the same run (flags, seed, embeddings)."""
    main = load(str(ROOT / "configs" / "study" / "multi30k.yaml"))
    methods = load(str(ROOT / "configs" / "study" / "multi30k-methods.yaml"))
    for key in ("data", "references", "lowercase", "results", "work", "generate", "reference_experiment"):
        assert getattr(methods, key) == getattr(main, key), key
    shared = {r.id for r in methods.runs} & {r.id for r in main.runs}
    assert {"dense-s1", "dense-s3", "paper-init-s1", "paper-init-s3"} <= shared
    for run_id in shared:
        assert methods.run(run_id) == main.run(run_id), run_id
    assert "small+emb-nomask-s1" in shared
    new = {r.id for r in methods.runs} - shared
    assert new == {"coats-3-s1", "iterand-s1", "iterand-s2", "gains-s1", "gains-s2", "qk-scale-s1",
                   "layernorm-affine-s1", "random-layers+emb-nomask-s1"}
    for run_id in new:  # each method is a switch on paper-init; the control one on small+emb-nomask
        base = main.run("small+emb-nomask-s1" if run_id.startswith("random-layers") else "paper-init-s1")
        flags = methods.run(run_id).flags
        assert {k: v for k, v in flags.items() if k in base.flags} == base.flags and len(flags) > len(base.flags)
        assert methods.run(run_id).embeddings_from == base.embeddings_from, run_id
