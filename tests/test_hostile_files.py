"""A user on a bad day: every tool, and fairseq's commands, over wrong files and bad output paths.

Each case asserts the exit status, one line on stderr that names the file, no traceback, and that
every file that was there before is byte for byte as it was (the whole working folder is hashed
before and after). The tools run in this process through their ``main(argv)``; fairseq-generate
runs as a command where its command line is what is tested.
"""
import hashlib
import os
import shutil
import sys

import pytest
import torch
import yaml

from conftest import ROOT, USER_DIR, run_cli
from one_layer_lottery import analyze, bench, curves, export, fairseq_patches, sample_corpus
from one_layer_lottery.checkpoints import average, dump_embeddings
from one_layer_lottery.model_files import InputFileError, check_checkpoint_file, load_checkpoint_state
from one_layer_lottery.study import __main__ as study

TOOLS = {"export": export.main, "analyze": analyze.main, "average_checkpoints": average.main,
         "dump_embeddings": dump_embeddings.main, "curves": curves.main, "study": study.main,
         "bench": bench.main, "sample_corpus": lambda argv: _sample_corpus(argv)}


def _sample_corpus(argv):
    saved = sys.argv
    sys.argv = ["sample_corpus", *argv]  # its main reads sys.argv
    try:
        return sample_corpus.main()
    finally:
        sys.argv = saved


@pytest.fixture(scope="module")
def originals(trained_sample, trained_transformer, tmp_path_factory):
    """{workspace name: file} of the good files every case starts from."""
    d = tmp_path_factory.mktemp("hostile-originals")
    compact = d / "sub.olls"
    assert export.main(["compact", str(trained_sample.checkpoint), str(compact)]) == 0
    tensor_only = d / "tensor.pt"
    torch.save(torch.zeros(3), tensor_only)
    log = d / "train.log"
    log.write_text(trained_sample.log)
    study_file = d / "study.yaml"  # the sample study, reading its committed results
    doc = yaml.safe_load((ROOT / "configs" / "study" / "sample.yaml").read_text())
    study_file.write_text(yaml.safe_dump({**doc, "root": str(ROOT)}, sort_keys=False))
    return {"ck.pt": trained_sample.checkpoint, "sub.olls": compact, "tf1.pt": trained_transformer[0],
            "tf2.pt": trained_transformer[1], "tensor.pt": tensor_only, "train.log": log, "study.yaml": study_file}


@pytest.fixture
def ws(originals, tmp_path, monkeypatch):
    """A working folder holding copies of the originals, a plain file, a folder, another name of
    ck.pt (symbolic and hard link), an empty file, a truncated checkpoint; the current directory."""
    for name, source in originals.items():
        shutil.copyfile(source, tmp_path / name)
    (tmp_path / "notes.txt").write_text("a plain file\n")
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "a-dir" / "inside.txt").write_text("kept\n")
    (tmp_path / "link.pt").symlink_to("ck.pt")
    os.link(tmp_path / "ck.pt", tmp_path / "hard.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "ck.pt").read_bytes()[:2000])
    monkeypatch.chdir(tmp_path)
    return tmp_path


def snapshot(root):
    """{relative path: what it is}: a file's sha256, a link's target, or 'folder'."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            key = os.path.relpath(path, root)
            if os.path.islink(path):
                found[key] = "link to " + os.readlink(path)
            elif os.path.isdir(path):
                found[key] = "folder"
            else:
                with open(path, "rb") as f:
                    found[key] = hashlib.sha256(f.read()).hexdigest()
    return found


def run_tool(tool, argv, capsys):
    """(exit status, stdout, stderr) of the tool's main(argv) in this process."""
    try:
        code = TOOLS[tool](argv) or 0
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line(code, err, tool, named, says):
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"{tool}: error: {named}: "), lines[0]
    assert says in lines[0], lines[0]
    assert "Traceback" not in err and "weights_only" not in err


# (tool, argv in the working folder, the path the line starts with, what it says); nothing may change.
REFUSED = {
    # An output that is one of the inputs, by any name.
    "export compact over its input": ("export", ["compact", "ck.pt", "ck.pt"], "ck.pt", "is one of the inputs"),
    "export compact over a symlink to its input": ("export", ["compact", "ck.pt", "link.pt"], "link.pt",
                                                    "is one of the inputs (ck.pt)"),
    "export compact over a hard link to its input": ("export", ["compact", "ck.pt", "hard.pt"], "hard.pt",
                                                      "is one of the inputs (ck.pt)"),
    "export compact over its input by a longer path": ("export", ["compact", "ck.pt", "a-dir/../ck.pt"],
                                                        "a-dir/../ck.pt", "is one of the inputs"),
    "export dense over its input": ("export", ["dense", "ck.pt", "ck.pt"], "ck.pt", "is one of the inputs"),
    "export dense of a compact file over it": ("export", ["dense", "sub.olls", "sub.olls"], "sub.olls",
                                               "is one of the inputs"),
    "export expand over its input": ("export", ["expand", "sub.olls", "sub.olls"], "sub.olls",
                                     "is one of the inputs"),
    "analyze into its input": ("analyze", ["ck.pt", "ck.pt"], "ck.pt", "is a file; the output must be a directory"),
    "average over one of its inputs": ("average_checkpoints", ["--inputs", "tf1.pt", "tf2.pt", "--output", "tf2.pt"],
                                       "tf2.pt", "is one of the inputs"),
    "average over a symlink to an input": ("average_checkpoints", ["--inputs", "ck.pt", "--output", "link.pt"],
                                           "link.pt", "is one of the inputs (ck.pt)"),
    "curves over its training log": ("curves", ["train.log", "run=train.log", "--metric", "loss"], "train.log",
                                     "is one of the inputs"),
    "study table over the study file": ("study", ["table", "study.yaml", "--out", "study.yaml"], "study.yaml",
                                        "is one of the inputs"),
    "study plot over the study file": ("study", ["plot", "study.yaml", "study.yaml"], "study.yaml",
                                       "is one of the inputs"),
    # An output that is a folder, in a folder that is missing, or under a file.
    "export compact to a folder": ("export", ["compact", "ck.pt", "a-dir"], "a-dir", "names a directory"),
    "export compact to a new folder's name": ("export", ["compact", "ck.pt", "new-dir/"], "new-dir/",
                                              "names a directory"),
    "export compact into a missing folder": ("export", ["compact", "ck.pt", "missing/sub.olls"], "missing/sub.olls",
                                             "does not exist"),
    "export expand under a file": ("export", ["expand", "sub.olls", "notes.txt/x.pt"], "notes.txt/x.pt",
                                   "does not exist"),
    "export dense into an unwritable folder": ("export", ["dense", "ck.pt", "/sys/dense.pt"], "/sys/dense.pt",
                                               "cannot write in /sys"),
    "analyze under a file": ("analyze", ["ck.pt", "notes.txt/report"], "notes.txt/report",
                             "cannot create the output directory"),
    "average to a folder": ("average_checkpoints", ["--inputs", "tf1.pt", "tf2.pt", "--output", "a-dir"], "a-dir",
                            "names a directory"),
    "average into a missing folder": ("average_checkpoints", ["--inputs", "tf1.pt", "--output", "missing/avg.pt"],
                                      "missing/avg.pt", "does not exist"),
    "dump_embeddings under a file": ("dump_embeddings", ["tf1.pt", "notes.txt/emb"], "notes.txt", "is a file"),
    "curves to a folder": ("curves", ["a-dir", "run=train.log"], "a-dir", "names a directory"),
    "sample_corpus into a file": ("sample_corpus", ["notes.txt"], "notes.txt", "is a file"),
    "bench results into a missing folder, before measuring": ("bench", ["--json", "missing/bench.json"],
                                                              "missing/bench.json", "does not exist"),
    # Inputs of the wrong kind.
    "analyze a fairseq transformer": ("analyze", ["tf1.pt", "out"], "tf1.pt", "a checkpoint of the 'transformer' model"),
    "export compact of a fairseq transformer": ("export", ["compact", "tf1.pt", "out.olls"], "tf1.pt",
                                                "a checkpoint of the 'transformer' model"),
    "export dense of a fairseq transformer": ("export", ["dense", "tf1.pt", "out.pt"], "tf1.pt",
                                              "a checkpoint of the 'transformer' model"),
    "export expand of a fairseq transformer": ("export", ["expand", "tf1.pt", "out.pt"], "tf1.pt",
                                               "is a fairseq checkpoint, but a compact subnetwork file is expected"),
    "average a transformer with a one-layer checkpoint": ("average_checkpoints",
                                                          ["--inputs", "ck.pt", "tf1.pt", "--output", "avg.pt"],
                                                          "tf1.pt", "different model keys from ck.pt"),
    "dump_embeddings of a one-layer checkpoint": ("dump_embeddings", ["ck.pt", "emb"], "ck.pt",
                                                  "is a one_layer_transformer"),
    "export compact of a torch file that is no checkpoint": ("export", ["compact", "tensor.pt", "out.olls"],
                                                             "tensor.pt", "not a fairseq checkpoint (no 'model' state)"),
    "average a torch file that is no checkpoint": ("average_checkpoints", ["--inputs", "tensor.pt", "--output", "a.pt"],
                                                   "tensor.pt", "not a fairseq checkpoint"),
    "study run of an empty file": ("study", ["run", "empty.pt"], "empty.pt", "the study must be a YAML mapping"),
    "study run of a folder": ("study", ["run", "a-dir"], "a-dir", "cannot read the file"),
    "curves of a truncated checkpoint as a log": ("curves", ["out.png", "run=truncated.pt"], "truncated.pt",
                                                  "not UTF-8 text"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_in_one_line_and_nothing_changes(case, ws, capsys):
    tool, argv, named, says = REFUSED[case]
    before = snapshot(ws)
    code, out, err = run_tool(tool, argv, capsys)
    assert_one_line(code, err, tool, named, says)
    assert snapshot(ws) == before


def test_dump_embeddings_writes_neither_table_when_one_cannot_be_written(ws, capsys):
    (ws / "emb.decoder.txt").mkdir()
    os.link(ws / "tf1.pt", ws / "own.encoder.txt")
    before = snapshot(ws)
    for prefix, named, says in (("emb", "emb.decoder.txt", "names a directory"),
                                ("own", "own.encoder.txt", "is one of the inputs (tf1.pt)")):
        code, out, err = run_tool("dump_embeddings", ["tf1.pt", prefix], capsys)
        assert_one_line(code, err, "dump_embeddings", named, says)
        assert snapshot(ws) == before


def test_analyze_writes_nothing_when_one_of_its_files_cannot_be_written(ws, capsys):
    (ws / "report").mkdir()
    (ws / "report" / "kept.png").mkdir()
    before = snapshot(ws)
    code, out, err = run_tool("analyze", ["ck.pt", "report"], capsys)
    assert_one_line(code, err, "analyze", os.path.join("report", "kept.png"), "names a directory")
    assert snapshot(ws) == before


# -- what works, and touches nothing else ---------------------------------------------------------

def test_a_users_own_tmp_files_are_never_touched(ws, capsys):
    (ws / "sub2.olls.tmp").write_bytes(b"the user's own")
    (ws / "ck.pt.tmp").write_bytes((ws / "ck.pt").read_bytes())
    before = snapshot(ws)
    # OUT.tmp beside the output, and an input named like the old temporary file of its own output.
    for argv in (["compact", "ck.pt", "sub2.olls"], ["compact", "ck.pt.tmp", "ck.pt"]):
        code, out, err = run_tool("export", argv, capsys)
        assert code == 0 and err == "", err
    after = snapshot(ws)
    assert {k: v for k, v in after.items() if k in before and k != "ck.pt"} == \
        {k: v for k, v in before.items() if k != "ck.pt"}
    assert set(after) == set(before) | {"sub2.olls"}  # no temporary file left, nothing else written
    assert (ws / "ck.pt").read_bytes()[:4] == (ws / "sub2.olls").read_bytes()[:4] != b"PK\x03\x04"


def test_two_fairseq_transformer_checkpoints_average_as_the_docs_say(ws, capsys):
    from fairseq import checkpoint_utils

    before = snapshot(ws)
    code, out, err = run_tool("average_checkpoints", ["--inputs", "tf1.pt", "tf2.pt", "--output", "avg.pt"], capsys)
    assert code == 0 and err == "" and out.startswith("averaged 2 checkpoint(s) into avg.pt"), err
    assert {k: v for k, v in snapshot(ws).items() if k != "avg.pt"} == before
    states = [load_checkpoint_state(ws / name) for name in ("tf1.pt", "tf2.pt", "avg.pt")]
    with fairseq_patches.loading_fairseq_checkpoints():
        models, cfg, _ = checkpoint_utils.load_model_ensemble_and_task([str(ws / "avg.pt")])
    first, second, averaged = (s["model"] for s in states)
    assert set(averaged) == set(first)
    moved = [k for k in first if first[k].is_floating_point() and not torch.equal(first[k], second[k])]
    assert moved  # the two updates changed the weights, so the average is tested
    for key in moved:
        torch.testing.assert_close(averaged[key], (first[key] + second[key]) / 2)
    assert cfg.model._name == "transformer" and type(models[0]).__name__ == "TransformerModel"
    assert "last_optimizer_state" not in states[2]  # it belonged to one input


# -- fairseq's own command lines: --path -----------------------------------------------------------

@pytest.fixture
def patched_fairseq():
    """The patches fairseq's command lines get, with the plugin's model file check, in this process."""
    fairseq_patches.patch_fairseq_cli(check_checkpoint_file)
    try:
        yield
    finally:
        fairseq_patches.undo_fairseq_cli_patches()


PATH_PROBLEMS = {
    "sub.olls": "is a compact subnetwork file, but a fairseq checkpoint is expected here; "
                "`python -m one_layer_lottery.export expand sub.olls CHECKPOINT.pt` turns it into one",
    "empty.pt": "the file is empty",
    "truncated.pt": "truncated or corrupt",
    "a-dir": "is a directory",
    "missing.pt": "no such file",
    "notes.txt": "not a fairseq checkpoint or a compact subnetwork file",
}


@pytest.mark.parametrize("name", sorted(PATH_PROBLEMS))
def test_fairseq_model_loading_checks_each_path(name, ws, patched_fairseq):
    from fairseq import checkpoint_utils

    before = snapshot(ws)
    with pytest.raises(InputFileError) as error:
        checkpoint_utils.load_model_ensemble(["tf1.pt", name])  # the second of an ensemble
    assert str(error.value).startswith(f"{name}: ") and PATH_PROBLEMS[name] in str(error.value)
    assert snapshot(ws) == before


@pytest.mark.parametrize("name", ["sub.olls", "empty.pt"])
def test_fairseq_generate_path_is_one_line(name, ws, sample_bin):
    proc = run_cli("fairseq-generate", sample_bin, "--user-dir", USER_DIR, "--path", ws / name, "--cpu",
                   check=False, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    path = str(ws / name)
    assert [line for line in lines if line.startswith("fairseq-generate: error:")] == lines[-1:], lines
    assert lines[-1].startswith(f"fairseq-generate: error: {path}: ")
    assert PATH_PROBLEMS[name].replace(name, path) in lines[-1], lines[-1]


def test_fairseq_copy_refuses_to_copy_a_file_onto_itself(ws, patched_fairseq):
    from fairseq.file_io import PathManager

    from one_layer_lottery.atomic import OutputError

    before = snapshot(ws)
    with pytest.raises(OutputError, match="link.pt: is one of the inputs"):
        PathManager.copy("ck.pt", "link.pt", overwrite=True)
    (ws / "copy.pt.tmp").write_bytes(b"the user's own")
    assert PathManager.copy("ck.pt", "copy.pt", overwrite=True)
    assert (ws / "copy.pt").read_bytes() == (ws / "ck.pt").read_bytes()
    assert (ws / "copy.pt.tmp").read_bytes() == b"the user's own"
    assert set(snapshot(ws)) == set(before) | {"copy.pt", "copy.pt.tmp"}


# -- the study runner: its data and references, before the first run --------------------------------

STUDY_PROBLEMS = {
    "data is missing": ({"data": "no-such-dir"}, "data: {ws}/no-such-dir is not a directory"),
    "data is a file": ({"data": "notes.txt"}, "data: {ws}/notes.txt is not a directory"),
    "data is not preprocessed": ({"data": "a-dir"}, "data: {ws}/a-dir holds no fairseq-preprocess output"),
    "references are missing": ({"references": "no-such.en"}, "references: {ws}/no-such.en: no such file"),
    "references are a folder": ({"references": "a-dir"}, "references: {ws}/a-dir: is a directory"),
    "no references": ({"references": None}, "no 'references'"),
}


@pytest.mark.parametrize("case", sorted(STUDY_PROBLEMS))
def test_study_run_checks_data_and_references_before_the_first_run(case, ws, sample_bin, capsys):
    change, says = STUDY_PROBLEMS[case]
    doc = {"data": str(sample_bin), "references": str(ROOT / "data" / "sample" / "test.en"), "results": "results",
           "work": "work", "train": {"arch": "transformer", "max-update": 1},
           "experiments": [{"name": "dense"}], **change}
    (ws / "bad-study.yaml").write_text(yaml.safe_dump({k: v for k, v in doc.items() if v is not None}))
    before = snapshot(ws)
    code, out, err = run_tool("study", ["run", "bad-study.yaml"], capsys)
    assert_one_line(code, err, "study", "bad-study.yaml", says.format(ws=ws))
    assert out == "" and snapshot(ws) == before  # no run started: no work folder, no log
