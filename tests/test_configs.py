"""Every Hydra YAML in configs/ is loaded the way fairseq-hydra-train loads it and builds its model
(on the sample corpus' dictionaries) with the paper's shape and recipe."""
import copy

import pytest
import torch

import one_layer_lottery  # noqa: F401  (registers the model, as common.user_dir does)
import one_layer_lottery.paper_batch  # noqa: F401  (registers the WMT configs' resolvers, as their Hydra callback does)
from conftest import ROOT, USER_DIR, run_cli
from one_layer_lottery.model_files import load_checkpoint_state
from one_layer_lottery.models.one_layer_transformer.embedding_file import write_embeddings

CONFIGS = ROOT / "configs"

# name -> (embed dim, FFN dim, heads, encoder layers, decoder layers, source language)
EXPECTED = {
    "sample": (128, 256, 4, 3, 3, "de"),
    "iwslt14_small": (512, 1024, 4, 6, 6, "de"),
    "iwslt14_wide": (1024, 2048, 4, 6, 6, "de"),
    "iwslt14_deep": (512, 1024, 4, 12, 12, "de"),
    "wmt14_base": (512, 2048, 8, 6, 6, "en"),
    "wmt14_big": (1024, 4096, 16, 6, 6, "en"),
}
EXPECTED.update({f"{name}_pretrained_emb": shape for name, shape in EXPECTED.items() if name != "sample"})
# the authors' WMT "wider" run (no pre-trained embeddings of its 1536 dimensions exist)
EXPECTED["wmt14_big_as_run"] = (1536, 6144, 24, 6, 6, "en")
WMT = sorted(name for name in EXPECTED if name.startswith("wmt14"))


def composed(name, overrides, hydra_node=False):
    """configs/NAME.yaml as fairseq-hydra-train composes it (schema check included), with defaults
    added and its interpolations not yet resolved; with hydra_node, the composed config's ``hydra`` node."""
    from fairseq.dataclass.initialize import add_defaults, hydra_init
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    hydra_init(name)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.1"):  # fairseq's hydra.main default
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=hydra_node)
    if hydra_node:
        return cfg.hydra
    add_defaults(cfg)
    return cfg


def resolved(cfg, **values):
    """A composed config with ``values`` set ({"group__key": value}: what an override of group.key
    sets), its interpolations resolved as fairseq-hydra-train resolves them."""
    from fairseq.dataclass.utils import omegaconf_no_object_check
    from omegaconf import OmegaConf, open_dict

    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        for key, value in values.items():
            OmegaConf.update(cfg, key.replace("__", "."), value, merge=False)
    with omegaconf_no_object_check():
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    OmegaConf.set_struct(cfg, True)
    return cfg


def load_config(name, overrides, hydra_node=False):
    """configs/NAME.yaml as fairseq-hydra-train loads it with ``overrides``, resolved (see composed)."""
    cfg = composed(name, overrides, hydra_node)
    return cfg if hydra_node else resolved(cfg)


def test_every_yaml_is_checked():
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == set(EXPECTED)
    assert not list(CONFIGS.rglob("*.yml"))


def _embedding_file(path, dictionary, dim):
    """A vector for every token of ``dictionary``: row i is i/100 + column/1000."""
    tokens = [dictionary[i] for i in range(len(dictionary))]
    rows = torch.arange(len(tokens)).unsqueeze(1) / 100 + torch.arange(dim) / 1000
    write_embeddings(str(path), tokens, rows)
    return rows


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_builds_the_papers_model(name, sample_bin, tmp_path):
    from fairseq import tasks

    emb, ffn, heads, enc_layers, dec_layers, src = EXPECTED[name]
    tgt = "en" if src == "de" else "de"
    overrides = [f"task.data={sample_bin}", f"common.user_dir={USER_DIR}"]
    pretrained = name.endswith("_pretrained_emb")
    if pretrained:
        from fairseq.data import Dictionary

        src_rows = _embedding_file(tmp_path / "enc.txt", Dictionary.load(str(sample_bin / f"dict.{src}.txt")), emb)
        tgt_rows = _embedding_file(tmp_path / "dec.txt", Dictionary.load(str(sample_bin / f"dict.{tgt}.txt")), emb)
        overrides += [f"model.encoder_embed_path={tmp_path / 'enc.txt'}",
                      f"model.decoder_embed_path={tmp_path / 'dec.txt'}"]
    cfg = load_config(name, overrides)
    assert (cfg.task.source_lang, cfg.task.target_lang) == (src, tgt)
    m = cfg.model
    assert m._name == "one_layer_transformer"
    assert (m.encoder_embed_dim, m.encoder_ffn_embed_dim, m.encoder_attention_heads, m.encoder_layers) \
        == (emb, ffn, heads, enc_layers)
    assert (m.decoder_embed_dim, m.decoder_ffn_embed_dim, m.decoder_attention_heads, m.decoder_layers) \
        == (emb, ffn, heads, dec_layers)
    if name != "sample":  # the paper's recipe (sample.yaml is the CPU demo)
        assert (m.prune_ratio, m.prune_method, m.share_mask) == (0.5, "super_mask", "layer_weights")
        assert (m.init, m.attention_init, m.mask_init) == ("kaiming_uniform", "fairseq_xavier", "standard")
        assert m.mask_layernorm_type == "masked_layernorm" and m.share_decoder_input_output_embed
        assert cfg.common.fp16 and cfg.common.seed == 1
        assert cfg.criterion.label_smoothing == 0.1
        if name.startswith("iwslt14"):
            assert cfg.dataset.max_tokens == 4096 and cfg.optimization.update_freq == [1]
            assert m.dropout == 0.3 and cfg.optimization.lr == [0.0005] and cfg.optimization.max_epoch == 55
            assert cfg.optimization.clip_norm == 0.5 and cfg.optimizer.weight_decay == 0.0001
            assert cfg.task.eval_bleu and cfg.checkpoint.best_checkpoint_metric == "bleu"
        else:
            assert m.dropout == 0.2 and cfg.optimization.lr == [0.001] and cfg.optimization.max_epoch == 100
            assert cfg.lr_scheduler.warmup_init_lr == 1e-7 and cfg.optimization.clip_norm == 0.0
            assert cfg.checkpoint.keep_last_epochs == 10
            assert cfg.distributed_training.ddp_backend == "legacy_ddp"
        assert m.attention_dropout == (0.1 if name == "wmt14_big_as_run" else 0.0)
    if not pretrained:
        assert m.encoder_embed_path is None and m.decoder_embed_path is None

    task = tasks.setup_task(cfg.task)
    with torch.no_grad():
        model = task.build_model(cfg.model)
    assert type(model).__name__ == "OneLayerTransformerModel"
    assert len(model.encoder.layers) == enc_layers and len(model.decoder.layers) == dec_layers
    for stack in (model.encoder, model.decoder):
        shared = stack.shared.weights
        assert tuple(shared["fc1"].weight.shape) == (ffn, emb) and tuple(shared["fc2"].weight.shape) == (emb, ffn)
        assert tuple(shared["self_attn_q_proj"].weight.shape) == (emb, emb)
        assert all(layer.self_attn.num_heads == heads for layer in stack.layers)
        assert stack.layers[0].fc1.scores.shape == (ffn, emb)
    assert model.encoder.embed_tokens.random_weight.shape == (len(task.source_dictionary), emb)
    if pretrained:  # the fixed rows arrived, scaled by 1/sqrt(kept fraction) (they are masked)
        scale = 0.5 ** -0.5
        for stack, rows in ((model.encoder, src_rows), (model.decoder, tgt_rows)):
            weight = stack.embed_tokens.random_weight
            not_pad = torch.arange(len(rows)) != stack.embed_tokens.padding_idx  # <pad> stays zero
            assert torch.equal(weight[not_pad], rows[not_pad].float() * scale)
    del model


# distributed world size -> (update_freq, max_tokens): about 8 x 4096 tokens per update
WMT_BATCHES = {1: (8, 4096), 2: (4, 4096), 3: (3, 3641), 4: (2, 4096), 6: (2, 2731), 8: (1, 4096), 16: (1, 2048)}


@pytest.mark.parametrize("name", WMT)
def test_wmt_configs_take_the_world_size_from_the_machine(name, sample_bin, monkeypatch):
    monkeypatch.setenv("ENCODER_EMBED_PATH", "enc.txt")  # the *_pretrained_emb configs need them to load
    monkeypatch.setenv("DECODER_EMBED_PATH", "dec.txt")
    cfg = load_config(name, [f"task.data={sample_bin}"])
    world = max(1, torch.cuda.device_count())  # fairseq's default: every visible GPU
    assert cfg.distributed_training.distributed_world_size == world
    update_freq, max_tokens = WMT_BATCHES.get(world, (None, None))
    if update_freq is not None:
        assert (cfg.optimization.update_freq, cfg.dataset.max_tokens) == ([update_freq], max_tokens)
    base = composed(name, [f"task.data={sample_bin}"])  # composed once; each world size resolved from it
    for world, (update_freq, max_tokens) in WMT_BATCHES.items():
        cfg = resolved(base, distributed_training__distributed_world_size=world)
        assert (cfg.optimization.update_freq, cfg.dataset.max_tokens) == ([update_freq], max_tokens), world
    # overrides: fewer tokens per GPU (the update frequency makes up for them), or a fixed update frequency
    cfg = load_config(name, [f"task.data={sample_bin}", "distributed_training.distributed_world_size=8",
                             "dataset.max_tokens=2048"])
    assert (cfg.optimization.update_freq, cfg.dataset.max_tokens) == ([2], 2048)
    cfg = load_config(name, [f"task.data={sample_bin}", "optimization.update_freq=[4]"])
    assert cfg.optimization.update_freq == [4]
    # fairseq-hydra-train registers the resolvers through the config's Hydra callback
    from hydra.utils import instantiate

    callbacks = load_config(name, [f"task.data={sample_bin}"], hydra_node=True).callbacks
    assert [type(instantiate(c)).__name__ for c in callbacks.values()] == ["RegisterResolvers"]


def test_pretrained_config_needs_the_paths(sample_bin, monkeypatch, tmp_path):
    """The paths come from ENCODER_EMBED_PATH / DECODER_EMBED_PATH (or overrides); without them the
    config does not load, rather than silently training random embeddings."""
    from omegaconf.errors import InterpolationResolutionError

    from fairseq.data import Dictionary

    monkeypatch.delenv("ENCODER_EMBED_PATH", raising=False)
    monkeypatch.delenv("DECODER_EMBED_PATH", raising=False)
    overrides = [f"task.data={sample_bin}", f"common.user_dir={USER_DIR}"]
    with pytest.raises(InterpolationResolutionError, match="ENCODER_EMBED_PATH"):
        load_config("iwslt14_small_pretrained_emb", overrides)
    for side, lang in (("ENCODER", "de"), ("DECODER", "en")):
        _embedding_file(tmp_path / lang, Dictionary.load(str(sample_bin / f"dict.{lang}.txt")), 512)
        monkeypatch.setenv(f"{side}_EMBED_PATH", str(tmp_path / lang))
    cfg = load_config("iwslt14_small_pretrained_emb", overrides)
    assert (cfg.model.encoder_embed_path, cfg.model.decoder_embed_path) == (str(tmp_path / "de"), str(tmp_path / "en"))


def test_unknown_keys_are_refused(sample_bin):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="no_such_option"):
        load_config("iwslt14_small", [f"task.data={sample_bin}", "optimization.no_such_option=1"])


@pytest.mark.slow
def test_a_paper_config_trains_with_fairseq_hydra_train(sample_bin, tmp_path, monkeypatch):
    """configs/iwslt14_small_pretrained_emb.yaml through the real CLI (shrunk, one update, fp32 on CPU):
    validation BLEU runs and the pre-trained rows from the environment's paths are in the checkpoint."""
    from fairseq.data import Dictionary

    rows = {lang: _embedding_file(tmp_path / f"emb.{lang}", Dictionary.load(str(sample_bin / f"dict.{lang}.txt")), 32)
            for lang in ("de", "en")}
    monkeypatch.setenv("ENCODER_EMBED_PATH", str(tmp_path / "emb.de"))
    monkeypatch.setenv("DECODER_EMBED_PATH", str(tmp_path / "emb.en"))
    proc = run_cli("fairseq-hydra-train", "--config-dir", CONFIGS, "--config-name", "iwslt14_small_pretrained_emb",
                   f"task.data={sample_bin}", f"common.user_dir={USER_DIR}", "common.fp16=false",
                   "model.encoder_embed_dim=32", "model.decoder_embed_dim=32", "model.encoder_ffn_embed_dim=64",
                   "model.decoder_ffn_embed_dim=64", "model.encoder_layers=1", "model.decoder_layers=1",
                   "optimization.max_update=1", "dataset.max_tokens=2000", "dataset.num_workers=0",
                   f"checkpoint.save_dir={tmp_path / 'ckpt'}", f"hydra.run.dir={tmp_path / 'hydra'}")
    assert "| bleu " in proc.stdout + proc.stderr
    state = load_checkpoint_state(tmp_path / "ckpt" / "checkpoint_best.pt")
    assert state["cfg"]["model"]["encoder_embed_path"] == str(tmp_path / "emb.de")
    weight = state["model"]["encoder.embed_tokens.random.weight"]
    not_pad = torch.arange(len(rows["de"])) != 1
    assert torch.equal(weight[not_pad], rows["de"][not_pad].float() * 0.5 ** -0.5)


@pytest.mark.slow
def test_a_wmt_config_trains_with_fairseq_hydra_train(sample_bin, tmp_path):
    """configs/wmt14_base.yaml through the real CLI (shrunk, one update, fp32 on CPU): its Hydra
    callback registers the batch resolvers, and the run gets the paper's 8 x 4096 tokens per update
    from the machine's GPU count."""
    proc = run_cli("fairseq-hydra-train", "--config-dir", CONFIGS, "--config-name", "wmt14_base",
                   f"task.data={sample_bin}", "task.source_lang=de", "task.target_lang=en",
                   f"common.user_dir={USER_DIR}", "common.fp16=false",
                   "model.encoder_embed_dim=32", "model.decoder_embed_dim=32", "model.encoder_ffn_embed_dim=64",
                   "model.decoder_ffn_embed_dim=64", "model.encoder_layers=1", "model.decoder_layers=1",
                   "model.encoder_attention_heads=4", "model.decoder_attention_heads=4",
                   "optimization.max_update=1", "dataset.num_workers=0",
                   f"checkpoint.save_dir={tmp_path / 'ckpt'}", f"hydra.run.dir={tmp_path / 'hydra'}")
    state = load_checkpoint_state(tmp_path / "ckpt" / "checkpoint_last.pt")
    cfg = state["cfg"]
    world = max(1, torch.cuda.device_count())
    assert cfg["distributed_training"]["distributed_world_size"] == world
    if world in WMT_BATCHES:
        update_freq, max_tokens = WMT_BATCHES[world]
        assert cfg["optimization"]["update_freq"] == [update_freq] and cfg["dataset"]["max_tokens"] == max_tokens
    assert state["optimizer_history"][-1]["num_updates"] == 1, proc.stderr[-2000:]


MODEL_RECIPE = ("prune_ratio", "prune_method", "share_mask", "init", "attention_init", "mask_init",
                "mask_layernorm_type", "encoder_normalize_before", "decoder_normalize_before", "dropout")
TRAINING_RECIPE = ("lr", "warmup_updates", "lr_scheduler", "optimizer", "label_smoothing")


def _parsed_recipe(argv):
    """The recipe of a fairseq-train command line, model options as the plugin resolves them."""
    from fairseq import options
    from one_layer_lottery.models.one_layer_transformer.options import resolve_options

    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    model = resolve_options(args)
    return {**{key: getattr(model, key) for key in MODEL_RECIPE},
            **{key: getattr(args, key) for key in TRAINING_RECIPE}}, args


def test_readme_example_and_sample_config_train_the_studys_best_recipe():
    from one_layer_lottery.models.one_layer_transformer.options import resolve_options
    from one_layer_lottery.study.spec import cli_flags, load
    from test_docs_commands import shell_commands

    run = load(str(ROOT / "configs" / "study" / "multi30k-long.yaml")).run("one-layer-s1")
    study, _ = _parsed_recipe(["data", "--user-dir", str(USER_DIR), *cli_flags(run.flags)])
    assert (study["init"], study["attention_init"], study["lr"]) == ("kaiming_uniform", "fairseq_xavier", [0.003])
    readme = [c for c in shell_commands((ROOT / "README.md").read_text()) if c[0] == "fairseq-train"]
    assert len(readme) == 1, readme
    example, args = _parsed_recipe(readme[0][1:])
    assert example == study
    assert args.max_update > 0  # it stops
    cfg = load_config("sample", [f"task.data={ROOT}", f"common.user_dir={USER_DIR}"])
    model = resolve_options(cfg.model)
    sample = {**{key: getattr(model, key) for key in MODEL_RECIPE}, "lr": list(cfg.optimization.lr),
              "warmup_updates": cfg.lr_scheduler.warmup_updates, "lr_scheduler": cfg.lr_scheduler._name,
              "optimizer": cfg.optimizer._name, "label_smoothing": cfg.criterion.label_smoothing}
    assert sample == study
    # and the sample-corpus study measures that recipe
    measured = load(str(ROOT / "configs" / "study" / "sample.yaml")).run("sample-config-s1")
    assert _parsed_recipe(["data", "--user-dir", str(USER_DIR), *cli_flags(measured.flags)])[0] == study
