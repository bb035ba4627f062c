"""scripts/train_iwslt14.sh, scripts/train_wmt14.sh, scripts/evaluate.sh and
python -m one_layer_lottery.dump_embeddings on the sample corpus, with tiny models."""
import contextlib
import io
import random
import re

import pytest
import sacrebleu
import torch

from conftest import ROOT, build, run_cli, run_script
from one_layer_lottery.dump_embeddings import DumpError, dump_embeddings
from one_layer_lottery.dump_embeddings import main as dump_main

# Tiny models trained on the 300 test pairs (a fast epoch; validating on the training subset would share
# fairseq's cached epoch iterator): the recipes' plumbing, not their results.
TINY = ["--encoder-embed-dim", 32, "--encoder-ffn-embed-dim", 64, "--encoder-layers", 2, "--decoder-layers", 2,
        "--max-tokens", 1000, "--train-subset", "test", "--num-workers", 0, "--log-interval", 1]


def load(path):
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
    with pytest.raises(DumpError, match="no such checkpoint"):
        dump_embeddings(str(tmp_path / "absent.pt"), str(tmp_path / "x"))
    assert not list(tmp_path.glob("x*"))


# -- training ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_train_iwslt14_uses_the_paper_recipe_and_evaluate_scores_it(sample_bin, tmp_path):
    save = tmp_path / "iwslt"
    run_script("train_iwslt14.sh", *TINY, "--max-update", 3, env={"DATA": str(sample_bin), "SAVE_DIR": str(save)})
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
    assert f"sacreBLEU (detokenised): BLEU|nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{sacrebleu.__version__}" \
           f" = {expected.score:.2f}" in proc.stdout
    assert (out / "bleu.txt").read_text() == proc.stdout


@pytest.mark.slow
def test_train_wmt14_recipe_embeddings_and_checkpoint_average(sample_bin, dense_run, tmp_path):
    _, encoder, decoder = dense_run
    save = tmp_path / "wmt"
    env = {"DATA": str(sample_bin), "SAVE_DIR": str(save), "GPUS": "0", "MAX_EPOCH": "2", "AVERAGE_LAST": "2",
           "PRUNE_RATIO": "0.7", "INIT": "signed_constant", "SHARE_MASK": "layer_mask",
           "ENCODER_EMBED_PATH": str(encoder), "DECODER_EMBED_PATH": str(decoder)}
    run_script("train_wmt14.sh", *TINY, env=env)
    first, second, averaged = (load(save / name) for name in ("checkpoint1.pt", "checkpoint2.pt",
                                                              "checkpoint_avg_last2.pt"))
    cfg = second["cfg"]
    assert cfg["model"]["_name"] == "one_layer_transformer_wmt_en_de_big"
    paper_masking(cfg["model"], prune_ratio=0.7, init="signed_constant", share_mask="layer_mask")
    assert cfg["model"]["encoder_embed_path"] == str(encoder) and cfg["model"]["decoder_embed_path"] == str(decoder)
    assert cfg["model"]["dropout"] == 0.2
    assert cfg["optimization"]["lr"] == [0.001] and cfg["optimization"]["clip_norm"] == 0.0
    assert cfg["optimization"]["update_freq"] == [8]  # 8 GPUs' batch on one process
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

def test_evaluate_scores_a_generate_log(tmp_path):
    refs = [f"it &apos;s sentence number {i} , isn &apos;t it ?" for i in range(40)]
    hyps = list(refs)
    hyps[3] = "something else entirely"
    order = list(range(40))
    random.Random(0).shuffle(order)  # fairseq prints sentences in batch order, not id order
    log = ["Generate test with beam=5: BLEU4 = 12.34, fake"]
    for i in order:
        log += [f"S-{i}\tsource {i}", f"T-{i}\t{refs[i]}", f"H-{i}\t-0.5\t{hyps[i]}", f"D-{i}\t-0.5\t{hyps[i]}"]
    gen = tmp_path / "generate.log"
    gen.write_text("\n".join(log) + "\n", encoding="utf-8")
    proc = run_script("evaluate.sh", "score", gen, tmp_path / "out", env={"TARGET_LANG": "en"})
    out = tmp_path / "out"
    assert lines(out / "hyp.tok") == hyps and lines(out / "ref.tok") == refs
    assert lines(out / "ref.detok")[0] == "it's sentence number 0, isn't it?"  # unescaped, detokenised
    expected = sacrebleu.corpus_bleu(lines(out / "hyp.detok"), [lines(out / "ref.detok")])
    assert 90 < expected.score < 100
    assert f"= {expected.score:.2f} " in proc.stdout
    assert "BLEU4 = 12.34" in proc.stdout and "sentences: 40" in proc.stdout

    # against a raw reference file
    raw = tmp_path / "raw.en"
    raw.write_text("".join(f"It's sentence number {i}, isn't it?\n" for i in range(40)), encoding="utf-8")
    proc = run_script("evaluate.sh", "score", gen, tmp_path / "out2", env={"TARGET_LANG": "en", "REFERENCE": str(raw)})
    expected = sacrebleu.corpus_bleu(lines(tmp_path / "out2" / "hyp.detok"), [lines(raw)])
    assert f"= {expected.score:.2f} " in proc.stdout and "case:mixed" in proc.stdout

    # a log whose sentences do not pair up is refused
    gen.write_text("H-0\t-0.1\ta\nH-1\t-0.1\tb\nT-0\ta\n", encoding="utf-8")
    proc = run_script("evaluate.sh", "score", gen, tmp_path / "out3", env={"TARGET_LANG": "en"}, check=False)
    assert proc.returncode != 0 and "2 hypotheses but 1 references" in proc.stderr
