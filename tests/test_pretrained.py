"""The pretrained directory: build from a study result, fairseq's hub interface, the translate command.

A tiny subnetwork is trained on the sample corpus prepared as the Multi30k data was (lowercase,
sacremoses without escaping, a sentencepiece model) and built into a pretrained directory from a
result file; the shipped directory (data/pretrained/) is checked where it exists, and its test BLEU
where ../shared/data is present too.
"""
import json
import os
import shutil
import sys
from types import SimpleNamespace

import pytest

from conftest import ROOT, SHARED, cli_env, run_command, train_in_process

SHIPPED = ROOT / "data" / "pretrained"
SOURCE_LINES = 600  # of the sample corpus's training text: enough for every word, quick to prepare
SHAPE = ("--encoder-embed-dim", 32, "--encoder-ffn-embed-dim", 64, "--decoder-embed-dim", 32,
         "--decoder-ffn-embed-dim", 64, "--encoder-layers", 2, "--decoder-layers", 2,
         "--encoder-attention-heads", 4, "--decoder-attention-heads", 4, "--share-all-embeddings",
         "--max-source-positions", 40, "--max-target-positions", 40, "--seed", 5)
GENERATE_FLAGS = ["--gen-subset", "test", "--beam", "5", "--batch-size", "128", "--required-batch-size-multiple",
                  "1", "--remove-bpe", "sentencepiece"]
RAW = ["Der kleine Junge trägt den Hund und die Mutter lacht.", "Die Frau sieht den großen Apfel im Garten.",
       "Das glückliche Kind läuft."]  # lines of data/sample/train.de, written as a user would


def _prepared_corpus(out, spm_prefix):
    """data/sample's splits through the hub's preprocessing, with a sentencepiece model trained on them."""
    import sentencepiece
    from fairseq.data import encoders
    from omegaconf import OmegaConf

    from one_layer_lottery.pretrained.hub import preprocessing

    splits = {"train": SOURCE_LINES, "valid": 100, "test": 100}
    raw = {(split, lang): (ROOT / "data" / "sample" / f"{split}.{lang}").read_text().splitlines()[:n]
           for split, n in splits.items() for lang in ("de", "en")}
    cfg = OmegaConf.create(preprocessing(f"{spm_prefix}.model", "de", "en"))
    tokenizer = encoders.build_tokenizer(cfg.tokenizer)
    tokenised = {key: [tokenizer.encode(line.lower()) for line in lines] for key, lines in raw.items()}
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(tokenised["train", "de"] + tokenised["train", "en"]), model_prefix=str(spm_prefix),
        vocab_size=200, model_type="bpe", bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0, minloglevel=2)
    bpe = encoders.build_bpe(cfg.bpe)
    for (split, lang), lines in tokenised.items():
        (out / f"{split}.{lang}").write_text("".join(bpe.encode(line) + "\n" for line in lines))


@pytest.fixture(scope="session")
def sample_pretrained(tmp_path_factory):
    """A tiny subnetwork trained 4 updates on the prepared sample corpus, its run's result file and
    the pretrained directory built from it. Attributes: dir, result, checkpoint, data."""
    from fairseq import options
    from fairseq_cli import preprocess

    from one_layer_lottery.pretrained.build import build, from_root
    from one_layer_lottery.study import results

    root = tmp_path_factory.mktemp("sample-pretrained")
    text, data, save_dir = root / "text", root / "bin", root / "run" / "checkpoints"
    for d in (text, save_dir):
        d.mkdir(parents=True)
    _prepared_corpus(text, text / "spm")
    preprocess.main(options.get_preprocessing_parser().parse_args([
        "--source-lang", "de", "--target-lang", "en", "--joined-dictionary", "--trainpref", str(text / "train"),
        "--validpref", str(text / "valid"), "--testpref", str(text / "test"), "--destdir", str(data),
        "--workers", "1"]))
    shutil.copyfile(text / "spm.model", data / "spm.model")
    trainer, _ = train_in_process(data, *SHAPE, updates=4)
    trainer.consolidate_optimizer()  # as fairseq-train does before it saves
    trainer.save_checkpoint(str(save_dir / "checkpoint_best.pt"), {})
    command = [from_root(data), "--user-dir", "one_layer_lottery", *map(str, SHAPE), "--save-dir", from_root(save_dir)]
    result = {"id": "tiny-s5", "experiment": "tiny", "seed": 5, "about": "", "flags": {}, "command": command,
              "commit": {"commit": "0123abc", "dirty": False}, "valid": [], "train": {}, "train_curve": None,
              "embeddings": None, "wall_s": 1.0, "finished": "",
              "test": {"bleu_tokenised": 12.34, "sacrebleu": 12.3, "sacrebleu_signature": "nrefs:1",
                       "length_ratio": 1.0, "brevity_penalty": 1.0, "sentences": 100, "checkpoint_update": 4,
                       "generate_flags": GENERATE_FLAGS}}
    result_path = root / "tiny-s5.json"
    results.write(str(result_path), result)
    build(str(result_path), str(root / "pretrained"), data_terms="The sample corpus is synthetic.")
    return SimpleNamespace(dir=root / "pretrained", result=result_path, checkpoint=save_dir / "checkpoint_best.pt",
                           data=data)


@pytest.fixture(scope="session")
def sample_hub(sample_pretrained):
    from one_layer_lottery.pretrained import load

    return load(sample_pretrained.dir)


def test_the_directory_holds_plain_files_within_three_megabytes(sample_pretrained):
    names = sorted(p.name for p in sample_pretrained.dir.iterdir())
    assert names == ["README.md", "model.olls", "provenance.json", "spm.model"]
    assert sum(p.stat().st_size for p in sample_pretrained.dir.iterdir()) < 3 << 20
    readme = (sample_pretrained.dir / "README.md").read_text()
    provenance = json.loads((sample_pretrained.dir / "provenance.json").read_text())
    for fact in ("12.34", "0123abc", provenance["result_file"], "The sample corpus is synthetic.",
                 "python -m one_layer_lottery.pretrained build"):
        assert fact in readme


def _check_provenance(directory):
    """The provenance's digest, options and file checksums against the compact file itself."""
    from one_layer_lottery.pretrained.build import in_root
    from one_layer_lottery.study.embeddings import digest
    from one_layer_lottery.study import results
    from one_layer_lottery.subnetwork.file_reader import read

    provenance = json.loads((directory / "provenance.json").read_text())
    header = read(str(directory / "model.olls")).header
    recorded = provenance["compact"]
    assert recorded["random_weights"] == {k: header["random_weights"][k] for k in ("sha256", "numel")}
    assert (recorded["arch"], recorded["seed"], recorded["init"], recorded["mask"]) == (
        header["arch"], header["seed"], header["init"], header["mask"])
    for name, entry in provenance["files"].items():
        assert entry == {"bytes": (directory / name).stat().st_size, "sha256": digest(str(directory / name))}
    result = results.read(in_root(provenance["result_file"]))
    assert provenance["test"]["bleu_tokenised"] == result["test"]["bleu_tokenised"]
    assert (provenance["commit"], provenance["seed"]) == (result["commit"], result["seed"])
    assert provenance["training_command"] == ["fairseq-train", *result["command"]]
    return provenance, result


def test_provenance_matches_the_compact_file_and_the_result(sample_pretrained):
    provenance, result = _check_provenance(sample_pretrained.dir)
    assert provenance["result_file"] == os.path.relpath(sample_pretrained.result, ROOT)
    assert provenance["compact"]["num_updates"] == 4


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="data/pretrained/ is not built")
def test_the_shipped_provenance_matches_its_compact_file_and_result():
    _check_provenance(SHIPPED)


def test_translate_is_fairseqs_own_hub_on_the_source_checkpoint(sample_pretrained, sample_hub):
    """The rebuilt subnetwork translates raw sentences as fairseq's stock hub interface over the
    training checkpoint, with the same tokenizer and sentencepiece, translates them lowercased."""
    from fairseq import hub_utils
    from omegaconf import open_dict

    from one_layer_lottery.fairseq_patches import loading_fairseq_checkpoints
    from one_layer_lottery.pretrained.hub import preprocessing

    with loading_fairseq_checkpoints():
        loaded = hub_utils.from_pretrained(str(sample_pretrained.checkpoint.parent), "checkpoint_best.pt",
                                           str(sample_pretrained.data))
    cfg = loaded["args"]
    with open_dict(cfg):
        cfg.update(preprocessing(sample_pretrained.data / "spm.model", "de", "en"))
    stock = hub_utils.GeneratorHubInterface(cfg, loaded["task"], loaded["models"]).eval()
    assert isinstance(sample_hub, hub_utils.GeneratorHubInterface)
    assert sample_hub.translate(RAW) == stock.translate([s.lower() for s in RAW])


def test_preprocessing_round_trip(sample_pretrained, sample_hub):
    corpus = (ROOT / "data" / "sample" / "train.de").read_text().splitlines()
    tokenised = sample_hub.tokenize(RAW[0])
    assert tokenised == "der kleine junge trägt den hund und die mutter lacht ." and tokenised in corpus
    pieces = sample_hub.apply_bpe(tokenised)
    assert sample_hub.src_dict.unk() not in sample_hub.binarize(pieces).tolist()
    assert sample_hub.detokenize(sample_hub.remove_bpe(pieces)) == RAW[0].lower()


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data")
def test_preprocessing_is_the_multi30k_datas(sample_pretrained, tmp_path):
    """load()'s tokenizer and sentencepiece, given the data's own spm.model, give the binarized test set."""
    from fairseq.data import Dictionary, data_utils

    from one_layer_lottery.pretrained import load

    data = SHARED / "multi30k-bench-bin"
    shutil.copyfile(sample_pretrained.dir / "model.olls", tmp_path / "model.olls")
    shutil.copyfile(data / "spm.model", tmp_path / "spm.model")
    hub = load(tmp_path)
    dictionary = Dictionary.load(str(data / "dict.de.txt"))
    binarized = data_utils.load_indexed_dataset(str(data / "test.de-en.de"), dictionary)
    raw = (SHARED / "multi30k" / "test.de").read_text(encoding="utf-8").split("\n")[:len(binarized)]
    for i, line in enumerate(raw):
        ours = dictionary.encode_line(hub.apply_bpe(hub.tokenize(line)), add_if_not_exist=False)
        assert ours.tolist() == binarized[i].tolist(), (i, line)


def test_an_empty_and_a_very_long_sentence_are_translated(sample_hub, caplog):
    assert isinstance(sample_hub.translate(""), str)
    limit = sample_hub.max_source_tokens()
    assert limit == 40
    with caplog.at_level("WARNING"):
        english = sample_hub.translate("der hund läuft . " * 50)
    assert isinstance(english, str)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and f"translating its first {limit - 1}" in warnings[0]


def _translate(*args, stdin=""):
    return run_command([sys.executable, "-m", "one_layer_lottery.translate", *map(str, args)], input=stdin,
                       cwd=ROOT, env=cli_env(), timeout=600)


def _in_process(hub, lines, batch_size):
    """What the command writes for ``lines``, translated here in the same batches."""
    from one_layer_lottery.translate import translations

    return [line for batch in translations(hub, lines, 5, batch_size) for line in batch]


def test_the_command_line_translates_stdin_line_by_line(sample_pretrained, sample_hub):
    lines = [RAW[0], "", "   ", RAW[1], "der hund läuft . " * 50, RAW[2]]
    proc = _translate("--model", sample_pretrained.dir, "--batch-size", 2, stdin="\n".join(lines) + "\n")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.split("\n")
    assert out[-1] == "" and len(out) == len(lines) + 1
    assert out[:len(lines)] == _in_process(sample_hub, lines, 2)
    assert out[1:3] == ["", ""] and all(out[i] for i in (0, 3, 4, 5))
    assert "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if "WARNING" in line] != []
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_the_command_line_reads_a_file_and_shows_progress_on_a_terminal(sample_pretrained, sample_hub, tmp_path,
                                                                          capsys, monkeypatch):
    from one_layer_lottery import translate

    source = tmp_path / "in.de"
    source.write_text("\n".join(RAW * 2) + "\n")
    assert translate.main(["--model", str(sample_pretrained.dir), "--batch-size", "2", str(source)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == _in_process(sample_hub, RAW * 2, 2)
    assert captured.err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    translate.main(["--model", str(sample_pretrained.dir), "--batch-size", "2", str(source)])
    assert "6/6" in capsys.readouterr().err


def _bad_directory(tmp_path, sample_pretrained, problem):
    bad = tmp_path / "bad"
    shutil.copytree(sample_pretrained.dir, bad)
    model, spm = bad / "model.olls", bad / "spm.model"
    if problem == "checkpoint as model":
        shutil.copyfile(sample_pretrained.checkpoint, model)
    elif problem == "truncated model":
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    elif problem == "text as model":
        model.write_text("ein mann fährt fahrrad .\n")
    elif problem == "no sentencepiece model":
        spm.unlink()
    elif problem == "text as sentencepiece model":
        spm.write_text("not a model\n")
    elif problem == "not a directory":
        return model
    return bad


@pytest.mark.parametrize("problem, says", [
    ("checkpoint as model", "is a fairseq checkpoint, but a compact subnetwork file is expected here"),
    ("truncated model", "truncated"),  # the header or the checksum, by where the file is cut
    ("text as model", "not a fairseq checkpoint or a compact subnetwork file"),
    ("no sentencepiece model", "spm.model: no such file"),
    ("text as sentencepiece model", "spm.model: not a sentencepiece model"),
    ("not a directory", "not a directory"),
])
def test_a_bad_model_directory_is_one_line_with_status_2(sample_pretrained, tmp_path, capsys, problem, says):
    from one_layer_lottery import translate

    bad = _bad_directory(tmp_path, sample_pretrained, problem)
    with pytest.raises(SystemExit) as exit_:
        translate.main(["--model", str(bad), os.devnull])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("translate: error: ") and err.count("\n") == 1 and says in err, err


def test_a_truncated_model_file_fails_in_one_line_from_the_shell(sample_pretrained, tmp_path):
    proc = _translate("--model", _bad_directory(tmp_path, sample_pretrained, "truncated model"), stdin="der hund .\n")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("translate: error: ") and proc.stderr.count("\n") == 1, proc.stderr


def test_check_decodes_the_test_set_as_the_study_scored_the_checkpoint(sample_pretrained, tmp_path):
    """check() on the compact file finds the tokenised BLEU the study's scorer gives the checkpoint."""
    from one_layer_lottery.pretrained.build import check
    from one_layer_lottery.study.runner import generate_test_set, read_generation

    log = tmp_path / "generate.log"
    generate_test_set(str(sample_pretrained.data), str(sample_pretrained.checkpoint), GENERATE_FLAGS, 5, str(log))
    scored = read_generation(str(log), "tiny-s5")
    found = check(str(sample_pretrained.dir))
    assert (found["bleu"], found["hypotheses"]) == (scored["bleu"], scored["hypotheses"])
    assert len(found["hypotheses"]) == 100
    assert found["recorded"] == 12.34


@pytest.mark.whole_machine
@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data")
@pytest.mark.skipif(not SHIPPED.is_dir(), reason="data/pretrained/ is not built")
def test_the_shipped_model_scores_the_test_bleu_its_result_file_records():
    from one_layer_lottery.pretrained.build import check, in_root
    from one_layer_lottery.study import results

    provenance = json.loads((SHIPPED / "provenance.json").read_text())
    recorded = results.read(in_root(provenance["result_file"]))["test"]
    found = check(str(SHIPPED))  # 1000 sentences, beam 5: the suite's one long decode
    assert (found["bleu"], len(found["hypotheses"])) == (recorded["bleu_tokenised"], recorded["sentences"])


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="data/pretrained/ is not built")
def test_the_readme_translates_with_the_shipped_model():
    from test_docs_commands import README, block_of, run_as_written

    block = block_of(README.read_text(), "python -m one_layer_lottery.translate")
    outputs = [run_as_written(command, ROOT).stdout for command in block]
    assert [len(out.splitlines()) for out in outputs] == [0, 2, 1]
    assert all(line.strip() for out in outputs for line in out.splitlines())


def test_build_refuses_a_partial_result_file_in_one_line(tmp_path, capsys):
    from one_layer_lottery.pretrained.__main__ import main

    partial = tmp_path / "run.json"
    partial.write_text('{"id": "x"}')
    with pytest.raises(SystemExit) as exit_:
        main(["build", str(partial), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("pretrained: error: ") and "partial result" in err
    assert not (tmp_path / "out").exists()
