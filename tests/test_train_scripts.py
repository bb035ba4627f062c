"""scripts/train_iwslt14.sh, scripts/train_wmt14.sh, scripts/evaluate.sh and
python -m one_layer_lottery.dump_embeddings on the sample corpus, with tiny models."""
import contextlib
import io
import random
import re
import shutil

import pytest
import sacrebleu
import torch

import stub_venv
from conftest import ROOT, build, run_cli, run_script
from one_layer_lottery import paper_batch
from one_layer_lottery.checkpoints.dump_embeddings import DumpError, dump_embeddings
from one_layer_lottery.checkpoints.dump_embeddings import main as dump_main
from one_layer_lottery.fairseq_patches import loading_fairseq_checkpoints
from one_layer_lottery.model_files import InputFileError

# Tiny models trained on the 300 test pairs (a fast epoch; validating on the training subset would share
# fairseq's cached epoch iterator): the recipes' plumbing, not their results.
TINY = ["--encoder-embed-dim", 32, "--encoder-ffn-embed-dim", 64, "--encoder-layers", 2, "--decoder-layers", 2,
        "--max-tokens", 1000, "--train-subset", "test", "--num-workers", 0, "--log-interval", 1]


# The one-layer WMT models' 16 / 24 heads do not divide TINY's 32 dimensions.
TINY_HEADS = ["--encoder-attention-heads", 4, "--decoder-attention-heads", 4]
# CPU runs of the paper recipes (a smoke test) need ALLOW_CPU=1.
CPU = {"ALLOW_CPU": "1"}


def load(path):
    with loading_fairseq_checkpoints():  # a dense model's checkpoint holds an argparse.Namespace
        return torch.load(path, map_location="cpu", weights_only=True)


def lines(path):
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def paper_masking(model_cfg, prune_ratio=0.5, init="kaiming_uniform", share_mask="layer_weights"):
    assert model_cfg["prune_ratio"] == prune_ratio
    assert model_cfg["prune_method"] == "super_mask"
    assert model_cfg["share_mask"] == share_mask
    assert model_cfg["init"] == init
    assert model_cfg["attention_init"] == "fairseq_xavier"
    assert model_cfg["mask_init"] == "standard"
    assert model_cfg["mask_layernorm_type"] == "masked_layernorm"
    assert model_cfg["share_decoder_input_output_embed"] is True
    assert model_cfg["scale_fan"] is False  # the authors' --scale-fan did nothing with kaiming_uniform


# -- pre-trained embeddings --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dense_run(sample_bin, tmp_path_factory):
    """A dense fairseq transformer trained 2 updates, and its embeddings dumped."""
    save = tmp_path_factory.mktemp("dense")
    run_cli("fairseq-train", sample_bin, "--arch", "transformer_iwslt_de_en", "--encoder-embed-dim", 32,
            "--decoder-embed-dim", 32, "--encoder-ffn-embed-dim", 64, "--decoder-ffn-embed-dim", 64,
            "--encoder-layers", 1, "--decoder-layers", 1, "--optimizer", "adam", "--lr", 1e-2, "--max-tokens", 1000,
            "--train-subset", "test", "--max-update", 2, "--save-dir", save, "--no-epoch-checkpoints", "--num-workers", 0)
    checkpoint = save / "checkpoint_last.pt"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # the CLI's main, in this process (no second fairseq import)
        dump_main([str(checkpoint), str(save / "emb")])
    encoder, decoder = save / "emb.encoder.txt", save / "emb.decoder.txt"
    assert out.getvalue().strip() == f"--encoder-embed-path {encoder} --decoder-embed-path {decoder}"
    return checkpoint, encoder, decoder


def _by_token(dictionary, weight):
    return {dictionary[i]: weight[i] for i in range(len(dictionary))}


@pytest.mark.slow
def test_dumped_embeddings_arrive_exactly_in_the_one_layer_model(dense_run, sample_bin, sample_bin_joined):
    checkpoint, encoder, decoder = dense_run
    dense = load(checkpoint)["model"]
    header = lines(encoder)[0].split()
    assert header[1] == "32" and int(header[0]) == len(lines(encoder)) - 1

    # The one-layer model is built on the *joined* dictionary: rows must follow the tokens, not the indices.
    for flags, scale in ((["--embed-no-mask"], 1.0), ([], 0.5 ** -0.5)):
        model, task, _ = build(sample_bin_joined, "--encoder-embed-dim", 32, "--encoder-ffn-embed-dim", 64,
                               "--encoder-layers", 1, "--decoder-layers", 1, "--encoder-embed-path", encoder,
                               "--decoder-embed-path", decoder, *flags)
        _, dense_task, _ = build(sample_bin, "--encoder-embed-dim", 32, "--encoder-layers", 1, "--decoder-layers", 1)
        for side, src_dict, joined_dict in (("encoder", dense_task.source_dictionary, task.source_dictionary),
                                            ("decoder", dense_task.target_dictionary, task.target_dictionary)):
            trained = _by_token(src_dict, dense[f"{side}.embed_tokens.weight"])
            ours = _by_token(joined_dict, getattr(model, side).embed_tokens.random_weight.detach())
            shared = [t for t in trained if t in ours and t != "<pad>"]
            # every real token of the dense model's dictionary (not fairseq's padding "madeupwordNNNN")
            assert all(t in shared for t in trained if t != "<pad>" and not t.startswith("madeupword"))
            for token in shared:
                assert torch.equal(ours[token], trained[token] * scale), (side, token)
            others = [t for t in ours if t not in trained]
            assert others and not any(torch.equal(ours[t], torch.zeros(32)) for t in others)  # still random


@pytest.mark.slow
def test_dump_embeddings_refuses_what_it_cannot_dump(dense_run, sample_bin_joined, tmp_path):
    checkpoint = dense_run[0]
    with pytest.raises(DumpError, match="rows but .*dict.de.txt has"):
        dump_embeddings(str(checkpoint), str(tmp_path / "x"), data=str(sample_bin_joined))
    state = load(checkpoint)
    state["model"]["encoder.embed_tokens.random.weight"] = state["model"].pop("encoder.embed_tokens.weight")
    torch.save(state, tmp_path / "masked.pt")
    with pytest.raises(DumpError, match="is a one_layer_transformer"):
        dump_embeddings(str(tmp_path / "masked.pt"), str(tmp_path / "x"))
    with pytest.raises(InputFileError, match="absent.pt: no such file"):
        dump_embeddings(str(tmp_path / "absent.pt"), str(tmp_path / "x"))
    assert not list(tmp_path.glob("x*"))


# -- training ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_train_iwslt14_uses_the_paper_recipe_and_evaluate_scores_it(sample_bin, tmp_path):
    save = tmp_path / "iwslt"
    run_script("train_iwslt14.sh", *TINY, "--max-update", 3, env={"DATA": str(sample_bin), "SAVE_DIR": str(save), **CPU})
    state = load(save / "checkpoint_best.pt")
    cfg = state["cfg"]
    assert cfg["model"]["_name"] == "one_layer_transformer_big_iwslt_de_en"  # the headline "wide" model
    paper_masking(cfg["model"])
    assert cfg["model"]["encoder_embed_dim"] == 32  # the extra flags override the recipe
    assert cfg["model"]["dropout"] == 0.3
    assert cfg["optimizer"]["adam_betas"] == "(0.9, 0.98)" and cfg["optimizer"]["weight_decay"] == 0.0001
    assert cfg["optimization"]["lr"] == [0.0005] and cfg["optimization"]["clip_norm"] == 0.5
    assert cfg["optimization"]["max_epoch"] == 55 and cfg["optimization"]["max_update"] == 3
    assert cfg["lr_scheduler"]["_name"] == "inverse_sqrt" and cfg["lr_scheduler"]["warmup_updates"] == 4000
    assert cfg["criterion"]["label_smoothing"] == 0.1
    assert cfg["task"]["eval_bleu"] is True and cfg["task"]["eval_bleu_detok"] == "moses"
    assert eval(cfg["task"]["eval_bleu_args"]) == {"beam": 5, "max_len_a": 1.2, "max_len_b": 10}
    assert cfg["task"]["eval_bleu_remove_bpe"] == "@@ "
    assert cfg["checkpoint"]["best_checkpoint_metric"] == "bleu"
    assert cfg["checkpoint"]["maximize_best_checkpoint_metric"] is True
    assert cfg["common"]["seed"] == 1 and cfg["common"]["fp16"] == torch.cuda.is_available()
    assert re.search(r"valid .*\| bleu [\d.]+", (save / "train.log").read_text())

    out = tmp_path / "eval"
    proc = run_script("evaluate.sh", sample_bin, save / "checkpoint_best.pt", out, "--max-len-a", 0, "--max-len-b", 8)
    generate = (out / "generate.log").read_text()
    assert "beam=5" in generate
    hyp, ref = lines(out / "hyp.tok"), lines(out / "ref.tok")
    assert len(hyp) == len(ref) == 300  # every test sentence, in id order
    assert ref == lines(ROOT / "data" / "sample" / "test.en")
    tokenised = re.search(r"Generate test with beam=5: BLEU4 = ([\d.]+)", generate).group(1)
    assert f"BLEU4 = {tokenised}" in proc.stdout
    expected = sacrebleu.corpus_bleu(lines(out / "hyp.detok"), [lines(out / "ref.detok")])
    # the sample data has no official references: the fallback is said on the line
    assert "sacreBLEU against the detokenised target lines, NOT the official references (no official references " \
           "known for this test set" in proc.stdout
    assert f"BLEU|nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{sacrebleu.__version__}" \
           f" = {expected.score:.2f}" in proc.stdout
    assert (out / "bleu.txt").read_text() == proc.stdout


@pytest.mark.slow
def test_train_wmt14_recipe_embeddings_and_checkpoint_average(sample_bin, dense_run, tmp_path):
    _, encoder, decoder = dense_run
    save = tmp_path / "wmt"
    env = {"DATA": str(sample_bin), "SAVE_DIR": str(save), "GPUS": "0", "MAX_EPOCH": "2", "AVERAGE_LAST": "2",
           "PRUNE_RATIO": "0.7", "INIT": "signed_constant", "SHARE_MASK": "layer_mask",
           "ENCODER_EMBED_PATH": str(encoder), "DECODER_EMBED_PATH": str(decoder), **CPU}
    run_script("train_wmt14.sh", *TINY, *TINY_HEADS, env=env)
    first, second, averaged = (load(save / name) for name in ("checkpoint1.pt", "checkpoint2.pt",
                                                              "checkpoint_avg_last2.pt"))
    cfg = second["cfg"]
    assert cfg["model"]["_name"] == "one_layer_transformer_wmt_en_de_big_as_run"  # what the paper's 17.29 ran
    assert cfg["model"]["attention_dropout"] == 0.1
    paper_masking(cfg["model"], prune_ratio=0.7, init="signed_constant", share_mask="layer_mask")
    assert cfg["model"]["encoder_embed_path"] == str(encoder) and cfg["model"]["decoder_embed_path"] == str(decoder)
    assert cfg["model"]["dropout"] == 0.2
    assert cfg["optimization"]["lr"] == [0.001] and cfg["optimization"]["clip_norm"] == 0.0
    assert cfg["optimization"]["update_freq"] == [8]  # 8 GPUs' batch on one process
    assert cfg["dataset"]["max_tokens"] == 1000  # TINY's --max-tokens overrides the recipe's 4096
    assert cfg["optimization"]["max_epoch"] == 2
    assert cfg["lr_scheduler"]["warmup_init_lr"] == 1e-07 and cfg["lr_scheduler"]["warmup_updates"] == 4000
    assert cfg["optimizer"]["weight_decay"] == 0.0
    assert cfg["distributed_training"]["ddp_backend"] == "legacy_ddp"
    assert cfg["distributed_training"]["distributed_world_size"] == 1
    assert cfg["checkpoint"]["keep_last_epochs"] == 10

    # the fixed pre-trained embeddings are in the random-weight slot, scaled by 1/sqrt(kept fraction)
    dense = load(dense_run[0])["model"]
    rows = dense["encoder.embed_tokens.weight"].shape[0]
    scale = 0.3 ** -0.5
    got = second["model"]["encoder.embed_tokens.random.weight"]
    assert got.shape[0] == rows
    not_pad = torch.arange(rows) != 1  # fairseq's <pad> row is zero
    assert torch.equal(got[not_pad], dense["encoder.embed_tokens.weight"][not_pad] * scale)

    # checkpoint_avg_last2.pt is the average of the two epoch checkpoints
    scores = [k for k in second["model"] if k.endswith(".scores")]
    assert scores
    for key in scores:
        expected = ((first["model"][key].double() + second["model"][key].double()) / 2).float()
        assert torch.equal(averaged["model"][key], expected), key
    assert torch.equal(averaged["model"]["encoder.embed_tokens.random.weight"], got)


# -- CUDA and GPU counts (stub fairseq-train, stub CUDA query) ------------------------------------

def stub_train(tmp_path, script, devices, **env):
    """``script`` with fairseq-train stubbed and ``devices`` CUDA devices; returns (process, the
    arguments fairseq-train received or None, the save dir)."""
    venv = tmp_path / "venv"
    if not venv.exists():
        stub_venv.make(venv, {"fairseq-train": stub_venv.RECORD_ARGS})
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    for lang in ("de", "en"):
        (data / f"dict.{lang}.txt").write_text("")
    args_file, save = tmp_path / "args", tmp_path / "save"
    args_file.unlink(missing_ok=True)
    shutil.rmtree(save, ignore_errors=True)
    full_env = {"VENV": str(venv), "STUB_CUDA_DEVICES": str(devices), "STUB_ARGS": str(args_file),
                "DATA": str(data), "SAVE_DIR": str(save), "AVERAGE_LAST": "0",
                "GPUS": "", "UPDATE_FREQ": "", "MAX_TOKENS": "", "ALLOW_CPU": "0", **env}
    proc = run_script(script, env=full_env, check=False)
    return proc, stub_venv.recorded_args(args_file), save


@pytest.mark.parametrize("script", ["train_iwslt14.sh", "train_wmt14.sh"])
def test_paper_recipes_refuse_to_train_on_cpu_unless_asked(tmp_path, script):
    proc, args, save = stub_train(tmp_path, script, 0)
    assert proc.returncode != 0
    assert "no CUDA device" in proc.stderr and "ALLOW_CPU=1" in proc.stderr
    assert ("months" if "wmt" in script else "weeks") in proc.stderr  # why
    assert args is None and not save.exists()

    proc, args, save = stub_train(tmp_path, script, 0, ALLOW_CPU="yes")
    assert proc.returncode != 0 and "ALLOW_CPU must be 0 or 1, got 'yes'" in proc.stderr and args is None

    proc, args, save = stub_train(tmp_path, script, 0, ALLOW_CPU="1")
    assert proc.returncode == 0, proc.stderr
    assert "training on CPU (ALLOW_CPU=1)" in proc.stderr
    assert "--fp16" not in args

    proc, args, save = stub_train(tmp_path, script, 1)  # one GPU: no question asked, fp16 on
    assert proc.returncode == 0, proc.stderr
    assert "--fp16" in args and "ALLOW_CPU" not in proc.stderr


# visible GPUs -> (update frequency, tokens per GPU)
GPU_BATCHES = {1: (8, 4096), 2: (4, 4096), 3: (3, 3641), 4: (2, 4096), 5: (2, 3277), 6: (2, 2731), 7: (2, 2341),
               8: (1, 4096), 16: (1, 2048)}


@pytest.mark.parametrize("devices", sorted(GPU_BATCHES))
def test_train_wmt14_keeps_the_papers_tokens_per_update_on_any_gpu_count(tmp_path, devices):
    proc, args, _ = stub_train(tmp_path, "train_wmt14.sh", devices)
    assert proc.returncode == 0, proc.stderr
    update_freq, max_tokens = GPU_BATCHES[devices]
    assert stub_venv.flag(args, "--distributed-world-size") == str(devices)
    assert stub_venv.flag(args, "--update-freq") == str(update_freq)
    assert stub_venv.flag(args, "--max-tokens") == str(max_tokens)
    tokens = devices * update_freq * max_tokens
    assert 32768 <= tokens < 32768 + devices * update_freq  # 8 x 4096, rounded up by less than a token a batch
    assert f"{devices} process(es) x update frequency {update_freq} x {max_tokens} tokens = {tokens}" in proc.stderr
    assert stub_venv.flag(args, "--arch") == "one_layer_transformer_wmt_en_de_big_as_run"
    assert "--fp16" in args
    # the Hydra configs' resolvers do the same arithmetic
    assert (paper_batch.update_freq(devices), paper_batch.max_tokens(devices)) == (update_freq, max_tokens)


def test_train_wmt14_gpu_overrides(tmp_path):
    def run(**env):
        proc, args, _ = stub_train(tmp_path, "train_wmt14.sh", 8, **env)
        assert proc.returncode == 0, proc.stderr
        return [stub_venv.flag(args, f) for f in ("--distributed-world-size", "--update-freq", "--max-tokens")]

    assert run(GPUS="2") == ["2", "4", "4096"]  # fewer GPUs than the machine has
    assert run(UPDATE_FREQ="2") == ["8", "2", "4096"]  # the user's update frequency, 4096 tokens
    assert run(MAX_TOKENS="2048") == ["8", "2", "2048"]  # less memory per GPU: the update frequency makes up
    assert run(MAX_TOKENS="3000", GPUS="3") == ["3", "4", "3000"]
    for env, message in (({"GPUS": "9"}, "GPUS=9, but torch sees 8 CUDA device(s)"),
                         ({"GPUS": "two"}, "GPUS must be a number, got 'two'"),
                         ({"UPDATE_FREQ": "0"}, "UPDATE_FREQ must be a positive number, got '0'"),
                         ({"MAX_TOKENS": "4k"}, "MAX_TOKENS must be a positive number, got '4k'")):
        proc, args, save = stub_train(tmp_path, "train_wmt14.sh", 8, **env)
        assert proc.returncode != 0 and message in proc.stderr
        assert args is None and not save.exists()
    proc, args, _ = stub_train(tmp_path, "train_wmt14.sh", 0, GPUS="2", ALLOW_CPU="1")
    assert proc.returncode != 0 and "GPUS=2, but torch sees 0 CUDA device(s)" in proc.stderr and args is None


def test_paper_batch_arithmetic():
    for world in range(1, 65):
        update_freq, max_tokens = paper_batch.update_freq(world), paper_batch.max_tokens(world)
        assert max_tokens <= 4096
        assert 32768 <= world * update_freq * max_tokens < 32768 + world * update_freq
        assert update_freq == max(1, -(-8 // world))
        # a configured max_tokens gives back the same update frequency
        assert paper_batch.update_freq(world, 32768, max_tokens) == update_freq
    assert paper_batch.update_freq(8, 32768, 1024) == 4
    with pytest.raises(ValueError, match="world size must be a positive integer, got 0"):
        paper_batch.update_freq(0)


def test_train_scripts_refuse_missing_data(tmp_path):
    for script, prepare in (("train_iwslt14.sh", "prepare_iwslt14.sh"), ("train_wmt14.sh", "prepare_wmt14_en_de.sh")):
        proc = run_script(script, env={"DATA": str(tmp_path / "nothing"), "SAVE_DIR": str(tmp_path / "s")},
                          check=False)
        assert proc.returncode != 0
        assert str(tmp_path / "nothing") in proc.stderr and prepare in proc.stderr
        assert not (tmp_path / "s").exists()
    proc = run_script("train_iwslt14.sh", env={"DATA": str(tmp_path), "FP16": "maybe"}, check=False)
    assert proc.returncode != 0


# -- scoring -----------------------------------------------------------------------------------------

def write_generate_log(path, refs, hyps, bleu_line="Generate test with beam=5: BLEU4 = 12.34, fake"):
    """A fairseq-generate output, sentences in a shuffled (batch) order."""
    order = list(range(len(refs)))
    random.Random(0).shuffle(order)  # fairseq prints sentences in batch order, not id order
    log = [bleu_line]
    for i in order:
        log += [f"S-{i}\tsource {i}", f"T-{i}\t{refs[i]}", f"H-{i}\t-0.5\t{hyps[i]}", f"D-{i}\t-0.5\t{hyps[i]}"]
    path.write_text("\n".join(log) + "\n", encoding="utf-8")
    return path


def test_evaluate_scores_a_generate_log(tmp_path):
    refs = [f"it &apos;s sentence number {i} , isn &apos;t it ?" for i in range(40)]
    hyps = list(refs)
    hyps[3] = "something else entirely"
    gen = write_generate_log(tmp_path / "generate.log", refs, hyps)
    proc = run_script("evaluate.sh", "score", gen, tmp_path / "out", env={"TARGET_LANG": "en"})
    out = tmp_path / "out"
    assert lines(out / "hyp.tok") == hyps and lines(out / "ref.tok") == refs
    assert lines(out / "ref.detok")[0] == "it's sentence number 0, isn't it?"  # unescaped, detokenised
    expected = sacrebleu.corpus_bleu(lines(out / "hyp.detok"), [lines(out / "ref.detok")])
    assert 90 < expected.score < 100
    assert f"sacreBLEU against the detokenised target lines, NOT the official references (no official references " \
           f"known for this test set: give REFERENCE=FILE or SACREBLEU_TEST_SET): BLEU|" in proc.stdout
    assert f"= {expected.score:.2f} " in proc.stdout
    assert "BLEU4 = 12.34" in proc.stdout and "sentences: 40" in proc.stdout
    assert "NOT the official references" in proc.stderr  # a warning too

    # against a raw reference file
    raw = tmp_path / "raw.en"
    raw.write_text("".join(f"It's sentence number {i}, isn't it?\n" for i in range(40)), encoding="utf-8")
    proc = run_script("evaluate.sh", "score", gen, tmp_path / "out2", env={"TARGET_LANG": "en", "REFERENCE": str(raw)})
    expected = sacrebleu.corpus_bleu(lines(tmp_path / "out2" / "hyp.detok"), [lines(raw)])
    assert f"sacreBLEU against the reference file {raw}: BLEU|" in proc.stdout
    assert f"= {expected.score:.2f} " in proc.stdout and "case:mixed" in proc.stdout
    assert "NOT the official" not in proc.stdout + proc.stderr

    # a log whose sentences do not pair up is refused
    gen.write_text("H-0\t-0.1\ta\nH-1\t-0.1\tb\nT-0\ta\n", encoding="utf-8")
    proc = run_script("evaluate.sh", "score", gen, tmp_path / "out3", env={"TARGET_LANG": "en"}, check=False)
    assert proc.returncode != 0 and "2 hypotheses but 1 references" in proc.stderr


# The official newstest2014 sentences of a small fake test set (raw, cased) and what the binarized data
# holds of them: Moses-tokenised, escaped, lowercased, a rare word unknown (as real T- lines look).
OFFICIAL_DE = [f"Das ist Satz Nummer {i}, nicht wahr? \u201eJa\u201c & mehr." for i in range(30)]
OFFICIAL_EN = [f"This is sentence number {i}, isn't it? \u201cYes\u201d & more." for i in range(30)]
T_LINES = [f"das ist satz &lt;&lt;unk&gt;&gt; {i} , nicht wahr ? &quot; ja &quot; &amp; mehr ." for i in range(30)]
HYPS = [f"Das ist Satz Nummer {i} , nicht wahr ? \u201e Ja \u201c &amp; mehr ." for i in range(30)]


def seed_sacrebleu_cache(cache):
    """$SACREBLEU as sacrebleu leaves it after downloading wmt14/full: the tarball (non-empty, so it is
    not fetched again) and its unpacked test-full/ folder; sacrebleu extracts the references itself."""
    import tarfile

    from test_data_scripts import add_bytes, newstest_sgm

    raw = cache / "wmt14" / "full" / "raw"
    (raw / "test-full").mkdir(parents=True)
    files = {"test-full/newstest2014-deen-src.en.sgm": newstest_sgm("src", "en", OFFICIAL_EN),
             "test-full/newstest2014-deen-ref.de.sgm": newstest_sgm("ref", "de", OFFICIAL_DE)}
    with tarfile.open(raw / "wmt14_full.test-full.tgz", "w:gz") as tar:
        for name, text in files.items():
            add_bytes(tar, name, text)
            (raw / name).write_text(text, encoding="utf-8")


def test_evaluate_scores_against_the_official_references(tmp_path):
    cache = tmp_path / "sacrebleu"
    seed_sacrebleu_cache(cache)
    gen = write_generate_log(tmp_path / "generate.log", T_LINES, HYPS)
    env = {"TARGET_LANG": "de", "SACREBLEU": str(cache), "SACREBLEU_TEST_SET": "wmt14/full en-de"}
    proc = run_script("evaluate.sh", "score", gen, tmp_path / "out", env=env)
    out = tmp_path / "out"
    assert lines(out / "ref.official") == OFFICIAL_DE and not (out / "ref.detok").exists()
    hyp = lines(out / "hyp.detok")
    assert hyp[0] == "Das ist Satz Nummer 0, nicht wahr? \u201eJa\u201c & mehr."
    official = sacrebleu.corpus_bleu(hyp, [OFFICIAL_DE])
    assert round(official.score, 2) == 100.0
    assert f"sacreBLEU against the official references (wmt14/full en-de): BLEU|nrefs:1|case:mixed|eff:no|tok:13a" \
           f"|smooth:exp|version:{sacrebleu.__version__} = 100.00 " in proc.stdout
    assert "NOT the official" not in proc.stdout + proc.stderr

    # without the references (no network: sacrebleu's download is refused), the fallback says so
    offline = dict(env, SACREBLEU=str(tmp_path / "empty"), https_proxy="http://127.0.0.1:9",
                   http_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    proc = run_script("evaluate.sh", "score", gen, tmp_path / "out2", env=offline)
    detok = sacrebleu.corpus_bleu(lines(tmp_path / "out2" / "hyp.detok"), [lines(tmp_path / "out2" / "ref.detok")])
    assert detok.score < 50  # the lowercased, <<unk>>-holding target lines are not the references
    assert "sacreBLEU against the detokenised target lines, NOT the official references (sacrebleu could not get " \
           "the wmt14/full en-de references: " in proc.stdout
    assert f"= {detok.score:.2f} " in proc.stdout
    assert not (tmp_path / "out2" / "ref.official").exists()

    # a test set sacreBLEU does not have, a pair it lacks and references of another length are refused
    for test_set, message in (("wmt14/fulll en-de", "sacreBLEU knows no test set 'wmt14/fulll'"),
                              ("wmt14/full en-xx", "the sacreBLEU test set wmt14/full has no language pair 'en-xx'"),
                              ("wmt14/full", "a sacreBLEU test set is 'NAME LANGPAIR'")):
        proc = run_script("evaluate.sh", "score", gen, tmp_path / "out3", env=dict(env, SACREBLEU_TEST_SET=test_set),
                          check=False)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr
        assert not (tmp_path / "out3" / "bleu.txt").exists()
    short = write_generate_log(tmp_path / "short.log", T_LINES[:29], HYPS[:29])
    proc = run_script("evaluate.sh", "score", short, tmp_path / "out4", env=env, check=False)
    assert proc.returncode != 0
    assert "the sacreBLEU test set wmt14/full en-de has 30 references, the output 29 sentences" in proc.stderr


# Stands in for fairseq-generate: records its arguments and prints $STUB_LOG.
GENERATE = stub_venv.RECORD_ARGS + 'cat "$STUB_LOG"\n'


def test_evaluate_takes_the_test_set_from_the_data(tmp_path):
    """DATA/test.sacrebleu (written by scripts/prepare_wmt14_en_de.sh) names the official references;
    the target language and the BPE removal come from DATA too."""
    venv = stub_venv.make(tmp_path / "venv", {"fairseq-generate": GENERATE}, real=["sacrebleu"])
    cache = tmp_path / "sacrebleu"
    seed_sacrebleu_cache(cache)
    data = tmp_path / "data"
    data.mkdir()
    for name in ("dict.en.txt", "dict.de.txt", "test.en-de.en.idx", "test.en-de.de.idx"):
        (data / name).write_text("")
    (data / "test.sacrebleu").write_text("wmt14/full en-de\n")
    checkpoint = tmp_path / "avg.pt"
    checkpoint.write_bytes(b"stub")
    gen = write_generate_log(tmp_path / "generate.log", T_LINES, HYPS, "Generate test with beam=5: BLEU4 = 55.5, x")
    env = {"VENV": str(venv), "STUB_LOG": str(gen), "SACREBLEU": str(cache), "SACREBLEU_TEST_SET": ""}

    def evaluate(out, **extra):
        args_file = tmp_path / f"{out}.args"
        proc = run_script("evaluate.sh", data, checkpoint, tmp_path / out, env=dict(env, STUB_ARGS=str(args_file),
                                                                                      **extra))
        return proc, stub_venv.recorded_args(args_file)

    proc, args = evaluate("out")
    assert stub_venv.flag(args, "--remove-bpe") == "@@ " and stub_venv.flag(args, "--path") == str(checkpoint)
    assert stub_venv.flag(args, "--required-batch-size-multiple") == "1"
    assert "BLEU4 = 55.5" in proc.stdout
    assert "sacreBLEU against the official references (wmt14/full en-de): BLEU|" in proc.stdout
    assert " = 100.00 " in proc.stdout  # German detokenisation, the official references
    assert lines(tmp_path / "out" / "ref.official") == OFFICIAL_DE

    proc, _ = evaluate("out2", SACREBLEU_TEST_SET="none")  # the user turns it off
    assert "NOT the official references (SACREBLEU_TEST_SET=none)" in proc.stdout
    (data / "test.sacrebleu").unlink()
    (data / "spm.model").write_text("")
    proc, args = evaluate("out3")
    assert "NOT the official references (no official references known" in proc.stdout
    assert stub_venv.flag(args, "--remove-bpe") == "sentencepiece"
