"""Every tool meets a bad input file with one line on stderr, exit status 2 and no output written."""
import os
import pickle
import sys

import pytest
import torch

from conftest import ROOT, SMALL, USER_DIR, run_cli, run_command, train_in_process, unsilenced_env
from one_layer_lottery import analyze, average_checkpoints, curves, export
from one_layer_lottery.checkpoints import dump_embeddings
from one_layer_lottery.study import __main__ as study


class NeedsCode:
    """Unpickling an instance needs this module: weights_only loading must refuse it."""


@pytest.fixture(scope="module")
def files(trained_sample, tmp_path_factory):
    """{name: path} of every kind of bad (and good) input file."""
    d = tmp_path_factory.mktemp("bad-inputs")
    good = trained_sample.checkpoint
    paths = {"checkpoint": good, "missing": d / "missing.pt", "directory": d / "a-directory"}
    paths["directory"].mkdir()
    (d / "empty.pt").write_bytes(b"")
    paths["empty"] = d / "empty.pt"
    (d / "truncated.pt").write_bytes(good.read_bytes()[:1000])
    paths["truncated"] = d / "truncated.pt"
    (d / "garbage.bin").write_bytes(bytes(range(7, 256)) * 20)
    paths["garbage"] = d / "garbage.bin"
    torch.save({"model": {"w": torch.zeros(2)}, "payload": NeedsCode()}, d / "needs-code.pt")
    paths["needs_code"] = d / "needs-code.pt"
    # The legacy (non-zip) format, with a pickle that would call os.system if it were unpickled.
    (d / "needs-code-legacy.pt").write_bytes(b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.")
    paths["needs_code_legacy"] = d / "needs-code-legacy.pt"
    paths["compact"] = d / "sub.olls"
    assert export.main(["compact", str(good), str(paths["compact"])]) == 0
    (d / "truncated.olls").write_bytes(paths["compact"].read_bytes()[:1000])
    paths["truncated_compact"] = d / "truncated.olls"
    paths["dense"] = d / "dense.pt"
    assert export.main(["dense", str(good), str(paths["dense"])]) == 0
    return paths


FILE_PROBLEMS = ("missing", "directory", "empty", "truncated", "garbage", "needs_code", "needs_code_legacy")
# (tool, argv builder, bad inputs beyond FILE_PROBLEMS): SRC is the bad file, OUT the output path.
TOOLS = {
    "export compact": (export.main, ["compact", "SRC", "OUT"], ("compact", "dense")),
    "export expand": (export.main, ["expand", "SRC", "OUT"], ("checkpoint", "truncated_compact")),
    "export dense": (export.main, ["dense", "SRC", "OUT"], ("dense", "truncated_compact")),
    "analyze": (analyze.main, ["SRC", "OUT"], ("dense", "truncated_compact")),
    "dump_embeddings": (dump_embeddings.main, ["SRC", "OUT"], ("compact",)),
    "average_checkpoints": (average_checkpoints.main, ["--inputs", "GOOD", "SRC", "--output", "OUT"], ("compact",)),
}
CASES = [(tool, problem) for tool, (_, _, more) in TOOLS.items() for problem in (*FILE_PROBLEMS, *more)]
# What each message must say (beyond naming the file).
SAYS = {
    "missing": "no such file", "directory": "is a directory", "empty": "the file is empty",
    "truncated": "truncated or corrupt", "garbage": "not a fairseq checkpoint or a compact subnetwork file",
    "needs_code": "need code to unpickle", "needs_code_legacy": "need code to unpickle",
    "compact": "is a compact subnetwork file, but a fairseq checkpoint is expected",
    "checkpoint": "is a fairseq checkpoint, but a compact subnetwork file is expected",
    "dense": "a one_layer_transformer checkpoint", "truncated_compact": "truncated",
}
# Where a compact file is expected, any checkpoint-like file is refused for its kind first.
SAYS_EXPAND = {p: SAYS["checkpoint"] for p in ("truncated", "needs_code", "needs_code_legacy")}


def _argv(template, files, src, out):
    return [{"SRC": str(src), "OUT": str(out), "GOOD": str(files["checkpoint"])}.get(a, a) for a in template]


def _outputs(out):
    """Every output path a tool might write for OUT (dump_embeddings writes OUT.encoder.txt / .decoder.txt)."""
    return [out, out.parent / f"{out.name}.encoder.txt", out.parent / f"{out.name}.decoder.txt"]


@pytest.mark.parametrize("existing_output", [False, True], ids=["no-output", "existing-output"])
@pytest.mark.parametrize("tool,problem", CASES)
def test_bad_input_is_one_line_and_writes_nothing(tool, problem, existing_output, files, tmp_path, capsys):
    main, template, _ = TOOLS[tool]
    src, out = files[problem], tmp_path / "out"
    if existing_output:
        for path in _outputs(out):
            path.write_bytes(b"left as it was")
    with pytest.raises(SystemExit) as exit_:
        main(_argv(template, files, src, out))
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert exit_.value.code == 2, captured.err
    assert len(lines) == 1, captured.err
    name = tool.split()[0]
    assert lines[0].startswith(f"{name}: error: {src}: "), lines[0]
    assert (SAYS_EXPAND if tool == "export expand" else {}).get(problem, SAYS[problem]) in lines[0]
    assert "weights_only" not in lines[0] and "Traceback" not in captured.err and captured.out == ""
    for path in _outputs(out):
        assert (path.read_bytes() == b"left as it was") if existing_output else not path.exists()


def test_the_legacy_pickle_is_never_run(files, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a) or 0)
    with pytest.raises(SystemExit):
        dump_embeddings.main([str(files["needs_code_legacy"]), str(tmp_path / "emb")])
    assert calls == [] and "os.system" in capsys.readouterr().err
    pickle.loads(files["needs_code_legacy"].read_bytes())  # the control: plain unpickling runs it
    assert calls == [("true",)]


@pytest.mark.parametrize("problem", ["missing", "directory", "empty", "garbage"])
def test_study_and_curves_name_a_bad_file(problem, files, tmp_path, capsys):
    src = files[problem]
    for main, argv, name, out in (
            (study.main, ["table", str(src), "--out", str(tmp_path / "table.md")], "study", tmp_path / "table.md"),
            (curves.main, [str(tmp_path / "c.png"), f"run={src}"], "curves", tmp_path / "c.png")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        lines = capsys.readouterr().err.splitlines()
        assert exit_.value.code == 2 and len(lines) == 1 and lines[0].startswith(f"{name}: error: {src}"), lines
        assert not out.exists()


def test_debug_variable_shows_the_traceback(files, tmp_path, monkeypatch):
    monkeypatch.setenv("ONE_LAYER_LOTTERY_DEBUG", "1")
    from one_layer_lottery.model_files import InputFileError

    with pytest.raises(InputFileError, match="truncated or corrupt"):
        analyze.main([str(files["truncated"]), str(tmp_path / "out")])


def _tool(*args):
    return run_command([sys.executable, "-m", *map(str, args)], cwd=ROOT, timeout=300,
                       env=unsilenced_env())


@pytest.mark.parametrize("tool", ["export", "analyze", "dump_embeddings", "average_checkpoints", "study", "curves"])
def test_command_line_prints_the_line_and_nothing_else(tool, files, tmp_path):
    """As users run them: no traceback, status 2 (the start-up is silent: test_fairseq_patches)."""
    bad = files["truncated"]
    argv = {"export": ["dense", bad, tmp_path / "o.pt"], "analyze": [bad, tmp_path / "o"],
            "dump_embeddings": [bad, tmp_path / "o"],
            "average_checkpoints": ["--inputs", bad, "--output", tmp_path / "o.pt"],
            "study": ["table", bad], "curves": [tmp_path / "o.png", f"run={bad}"]}[tool]
    proc = _tool(f"one_layer_lottery.{tool}", *argv)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(f"{tool}: error: {bad}: ")


# -- option errors of fairseq-train with the plugin: a usage error naming the flag, no traceback --
OPTION_CASES = {
    "prune ratio": (("--prune-ratio", 1.5), "--prune-ratio must be strictly between 0 and 1"),
    "prune method": (("--prune-method", "nope"), "argument --prune-method: invalid choice: 'nope'"),
    "init": (("--init", "nope"), "argument --init: invalid choice: 'nope'"),
    "mask log interval": (("--mask-log-interval", -1), "--mask-log-interval must be a non-negative integer"),
    "share-all without a joined dictionary": (("--share-all-embeddings",), "--share-all-embeddings requires a "
                                                                          "joined dictionary"),
    "missing embedding file": (("--encoder-embed-path", "/nonexistent/emb.txt"),
                               "--encoder-embed-path /nonexistent/emb.txt: cannot open the embedding file"),
    # Refused once the model (and any checkpoint) is loaded, before the data loader's workers start.
    "threshold that keeps no weight": (("--prune-method", "threshold", "--mask-threshold", 5),
                                       "--prune-method threshold --mask-threshold 5.0 keeps no weight of "
                                       "encoder.embed_tokens"),
}


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_fairseq_train_option_error_is_a_usage_error(case, sample_bin, tmp_path):
    flags, message = OPTION_CASES[case]
    proc = run_cli("fairseq-train", sample_bin, "--user-dir", USER_DIR, "--arch", "one_layer_transformer_iwslt_de_en",
                   "--encoder-embed-dim", 32, "--decoder-embed-dim", 32, "--max-tokens", 500, "--max-update", 1,
                   "--optimizer", "adam", "--save-dir", tmp_path, *flags, check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert last.startswith("fairseq-train: error: ") and message in last, last
    assert not list(tmp_path.iterdir())  # no checkpoint written


def test_a_library_caller_still_gets_the_exception(sample_bin):
    from conftest import build
    from one_layer_lottery.models.one_layer_transformer.options import OptionError

    with pytest.raises(OptionError, match="--prune-ratio"):
        build(sample_bin, "--prune-ratio", 1.5)


def test_fairseq_generate_names_a_checkpoint_of_other_options(trained_sample):
    proc = run_cli("fairseq-generate", trained_sample.data, "--user-dir", USER_DIR, "--path", trained_sample.checkpoint,
                   "--model-overrides", "{'prune_ratio': 0.3}", "--beam", 2, "--batch-size", 50, check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert last.startswith("fairseq-generate: error: the checkpoint does not match this one_layer_transformer")
    assert "--prune-ratio: the checkpoint's is 0.5, this model's is 0.3" in last


# -- option values, as fairseq-train parses them: each refused before any training, naming the flag --
NAN, INF = "nan", "inf"
VALUE_CASES = [
    (("--mask-init", "constant", "--mask-constant", NAN), "--mask-constant must be a finite number, got nan"),
    (("--mask-constant=-inf",), "--mask-constant must be a finite number, got -inf"),
    (("--prune-method", "threshold", "--mask-threshold", NAN), "--mask-threshold must be a finite number, got nan"),
    (("--prune-method", "threshold", "--mask-threshold", INF), "--mask-threshold must be a finite number, got inf"),
    (("--mask-threshold=-inf",), "--mask-threshold must be a finite number, got -inf"),
    (("--prune-method", "sigmoid_threshold", "--mask-threshold", 1), "--mask-threshold 1.0 keeps no weight under "
                                                                      "--prune-method sigmoid_threshold"),
    (("--prune-method", "sigmoid_threshold"), "--mask-threshold 0.0 keeps every weight under --prune-method "
                                              "sigmoid_threshold"),
    *[(("--prune-ratio", v), f"--prune-ratio must be strictly between 0 and 1 (the fraction of weights REMOVED), "
                             f"got {float(v)}") for v in (NAN, INF, 0, 1, -0.5)],
    *[(("--mask-coats", v), f"--mask-coats must be an integer from 1 to 32, got {v}") for v in (0, 33, -1)],
    (("--rerand-interval", -1), "--rerand-interval must be a non-negative integer (0: off), got -1"),
    *[(("--rerand-fraction", v), f"--rerand-fraction must be a number in (0, 1], got {float(v)}")
      for v in (NAN, INF, 0, 1.5)],
    *[(("--qk-init-scale", v), f"--qk-init-scale must be a finite number above 0, got {float(v)}")
      for v in (NAN, INF, 0, -1)],
    *[((f"--{name}", v), f"--{name} must be a probability in [0, 1), got {float(v)}")
      for name in ("dropout", "attention-dropout", "activation-dropout") for v in (NAN, 1, -0.1)],
    (("--encoder-embed-dim", 0), "--encoder-embed-dim must be a positive integer, got 0"),
    (("--decoder-ffn-embed-dim", -3), "--decoder-ffn-embed-dim must be a positive integer, got -3"),
    (("--encoder-layers", -1), "--encoder-layers must be a non-negative integer, got -1"),
    (("--decoder-attention-heads", 5), "--decoder-embed-dim 32 must be a multiple of --decoder-attention-heads 5"),
    (("--mask-log-interval", -2), "--mask-log-interval must be a non-negative integer, got -2"),
]


@pytest.fixture(scope="module")
def build_from_flags(sample_bin):
    """The model of fairseq-train's parsed command line (SMALL shape plus ``flags``), built in process."""
    from types import SimpleNamespace

    from fairseq import options
    from fairseq.data import Dictionary
    from one_layer_lottery.models.one_layer_transformer.model import OneLayerTransformerModel

    task = SimpleNamespace(source_dictionary=Dictionary.load(str(sample_bin / "dict.de.txt")),
                           target_dictionary=Dictionary.load(str(sample_bin / "dict.en.txt")))

    def build_model(*flags):
        args = options.parse_args_and_arch(options.get_training_parser(), [
            str(sample_bin), "--user-dir", USER_DIR, "--arch", "one_layer_transformer_iwslt_de_en",
            *map(str, (*SMALL, *flags))])
        return OneLayerTransformerModel.build_model(args, task)

    return build_model


@pytest.mark.parametrize("flags,message", VALUE_CASES, ids=[" ".join(map(str, f)) for f, _ in VALUE_CASES])
def test_a_bad_option_value_is_refused_naming_the_flag(flags, message, build_from_flags):
    from one_layer_lottery.models.one_layer_transformer.options import OptionError

    with pytest.raises(OptionError) as error:
        build_from_flags(*flags)
    assert str(error.value).startswith(message) and "\n" not in str(error.value), str(error.value)


def test_the_value_checks_let_good_values_through(build_from_flags):
    """The control: values at the edges of each range build."""
    model = build_from_flags("--prune-ratio", 0.01, "--mask-coats", 32, "--rerand-interval", 0, "--rerand-fraction", 1,
                             "--qk-init-scale", 1e-3, "--dropout", 0, "--mask-constant", -2.5, "--encoder-layers", 0,
                             "--mask-log-interval", 0)
    assert len(model.encoder.layers) == 0
    build_from_flags("--prune-method", "sigmoid_threshold", "--mask-threshold", 0.999)


def test_learned_gains_takes_no_value(build_from_flags, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_from_flags("--learned-gains", NAN)
    assert exit_.value.code == 2 and "unrecognized arguments: nan" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [("--mask-threshold", 0.3), ("--mask-init", "constant", "--mask-constant", 0)],
                         ids=["above every score", "constant scores on the threshold"])
def test_a_threshold_that_keeps_no_weight_is_refused_before_the_first_update(flags, sample_bin):
    """The scores of SMALL's matrices start within +-1/sqrt(32) (0.18): no weight passes 0.3, nor a
    constant 0 the default threshold 0. Refused when training starts, before the first update."""
    from one_layer_lottery.models.one_layer_transformer.options import OptionError

    with pytest.raises(OptionError, match=r"--prune-method threshold --mask-threshold 0\.[03] keeps no weight of "
                                          r"encoder\.embed_tokens: its scores are between"):
        train_in_process(sample_bin, *SMALL, "--prune-method", "threshold", *flags, updates=1)
    trainer, _ = train_in_process(sample_bin, *SMALL, "--prune-method", "threshold", "--mask-threshold", 0.1,
                                  updates=1)  # the control: some scores pass 0.1
    assert trainer.get_num_updates() == 1


def test_fairseq_hydra_train_reports_a_bad_value_in_one_line(sample_bin, tmp_path):
    """The YAML path: configs/sample.yaml with a bad override, through the real command line."""
    proc = run_cli("fairseq-hydra-train", "--config-dir", ROOT / "configs", "--config-name", "sample",
                   f"task.data={sample_bin}", f"common.user_dir={USER_DIR}", "model.prune_ratio=nan",
                   f"checkpoint.save_dir={tmp_path / 'ckpt'}", f"hydra.run.dir={tmp_path / 'hydra'}", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == ("fairseq-hydra-train: error: --prune-ratio must be strictly "
                                                    "between 0 and 1 (the fraction of weights REMOVED), got nan")
    assert "Error executing job" not in proc.stderr and not list((tmp_path / "ckpt").iterdir())
