"""The WMT14 architectures: the "wider" model as the authors' run built it, beside the one they meant."""
import pytest

from conftest import USER_DIR, build

AS_RUN = "one_layer_transformer_wmt_en_de_big_as_run"
MEANT = "one_layer_transformer_wmt_en_de_big"


def parsed_model_cfg(data_dir, arch, *flags):
    """cfg.model as fairseq-train sees it for ``--arch arch`` (no model built)."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = options.parse_args_and_arch(options.get_training_parser(),
                                       [str(data_dir), "--user-dir", USER_DIR, "--arch", arch, *map(str, flags)])
    return convert_namespace_to_omegaconf(args).model


@pytest.mark.parametrize("arch, shape, attention_dropout", [(AS_RUN, (1536, 6144, 24), 0.1), (MEANT, (1024, 4096, 16), 0.0)])
def test_wmt_big_architectures_defaults(sample_bin, arch, shape, attention_dropout):
    m = parsed_model_cfg(sample_bin, arch)
    emb, ffn, heads = shape
    for side in ("encoder", "decoder"):
        assert (m[f"{side}_embed_dim"], m[f"{side}_ffn_embed_dim"], m[f"{side}_attention_heads"], m[f"{side}_layers"]) \
            == (emb, ffn, heads, 6)
        assert m[f"{side}_normalize_before"] is False  # post-norm, as fairseq's transformer_vaswani_wmt_en_de_big
    assert m.attention_dropout == attention_dropout
    assert m.dropout == 0.3 and m.activation_dropout == 0.0 and m.activation_fn == "relu"
    # the recipe's --dropout 0.2 leaves the attention dropout alone
    m = parsed_model_cfg(sample_bin, arch, "--dropout", 0.2)
    assert (m.dropout, m.attention_dropout) == (0.2, attention_dropout)


def test_as_run_architecture_builds_1536_6144_24_with_attention_dropout(sample_bin):
    # one virtual layer per stack: the full 6 + 6 holds 400M scores (tests/test_model.py builds it)
    model, _, cfg = build(sample_bin, "--encoder-layers", 1, "--decoder-layers", 1, arch=AS_RUN)
    assert cfg.model._name == AS_RUN
    assert model.encoder.embed_tokens.embedding_dim == model.decoder.embed_tokens.embedding_dim == 1536
    for stack in (model.encoder, model.decoder):
        layer = stack.layers[0]
        assert (layer.fc1.in_features, layer.fc1.out_features) == (1536, 6144)
        assert (layer.fc2.in_features, layer.fc2.out_features) == (6144, 1536)
        assert layer.self_attn.num_heads == 24 and layer.self_attn.head_dim == 64
        assert layer.self_attn.dropout_module.p == 0.1
        assert stack.shared.weights["fc1"].weight.shape == (6144, 1536)
    cross = model.decoder.layers[0].encoder_attn
    assert cross.num_heads == 24 and cross.dropout_module.p == 0.1
    assert model.encoder.layers[0].dropout_module.p == 0.3
