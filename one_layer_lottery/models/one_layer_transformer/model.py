"""The one-layer randomly weighted Transformer (Shen et al., EMNLP 2021) as a fairseq model."""
import argparse
import contextlib
import logging

from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerConfig, TransformerModelBase
from fairseq.utils import safe_getattr

from ...masking import MaskedWeight
from ...masking.rerandomize import Rerandomizer
from ...masking.selection import TOPK_METHODS
from .embedding_file import read_embeddings
from .checkpoint_options import checked_state_dict, record_tensor, recorded_options
from .config import ARCHITECTURES, OneLayerTransformerConfig
from .layers import OneLayerTransformerDecoder, OneLayerTransformerEncoder, build_masked_embedding
from .mask_logging import MaskMonitor
from .options import (OptionError, check_transformer_options, resolve_options, validated_log_interval,
                      validated_mask_options)
from .state_keys import is_scores, module_of, parse_module_path

logger = logging.getLogger(__name__)
MODEL_NAME = "one_layer_transformer"


@register_model(MODEL_NAME, dataclass=OneLayerTransformerConfig)
class OneLayerTransformerModel(TransformerModelBase):
    """Encoder-decoder Transformer whose virtual layers are learned masks over frozen random weights."""

    @classmethod
    def add_args(cls, parser):
        # No defaults on the parser, so that the --arch functions can fill them in.
        gen_parser_from_dataclass(parser, OneLayerTransformerConfig(), delete_default=True)

    @classmethod
    def build_model(cls, cfg, task):
        args = resolve_options(cfg)
        opts = validated_mask_options(args)
        log_interval = validated_log_interval(args)
        check_transformer_options(args)
        flat = vars(args).copy()
        flat.update(decoder_input_dim=args.decoder_embed_dim, decoder_output_dim=args.decoder_embed_dim,
                    tpu=False)
        tcfg = TransformerConfig.from_namespace(argparse.Namespace(**flat))
        src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
        if args.share_all_embeddings:
            if src_dict != tgt_dict:
                raise OptionError("--share-all-embeddings requires a joined dictionary "
                                 "(fairseq-preprocess --joined-dictionary): source and target dictionaries differ")
            if args.encoder_embed_dim != args.decoder_embed_dim:
                raise OptionError("--share-all-embeddings requires --encoder-embed-dim == --decoder-embed-dim")
            if args.decoder_embed_path and args.decoder_embed_path != args.encoder_embed_path:
                raise OptionError("--share-all-embeddings is not compatible with a different --decoder-embed-path")
            tcfg.share_decoder_input_output_embed = True
        enc_emb = cls.build_dictionary_embedding(opts, src_dict, args.encoder_embed_dim, args.encoder_embed_path,
                                                 "encoder")
        dec_emb = enc_emb if args.share_all_embeddings else cls.build_dictionary_embedding(
            opts, tgt_dict, args.decoder_embed_dim, args.decoder_embed_path, "decoder")
        encoder = OneLayerTransformerEncoder(tcfg, src_dict, enc_emb, opts)
        decoder = OneLayerTransformerDecoder(tcfg, tgt_dict, dec_emb, opts)
        model = cls(tcfg, encoder, decoder)
        if not any(p.requires_grad for p in model.parameters()):
            raise OptionError("nothing would train: --layers-no-mask with --embed-no-mask leaves no scores; let "
                              "LayerNorm affine parameters (--mask-layernorm-type normal_layernorm) or biases "
                              "(--need-bias) train")
        model.mask_options = opts
        model.masks_checked = False
        model.recorded_options = recorded_options(args)
        model.mask_monitor = MaskMonitor(log_interval)
        model.rerandomizer = Rerandomizer(opts.rerand, layer_weight_groups(model))
        return model

    @staticmethod
    def build_dictionary_embedding(opts, dictionary, dim, path, side):
        """The masked embedding of ``dictionary``, with the pre-trained rows of ``path`` if given."""
        pretrained = rows = None
        flag = f"--{side}-embed-path"
        if path:
            vocab = {dictionary[i]: i for i in range(len(dictionary))}
            pretrained, rows = read_embeddings(path, dim, vocab, flag)
            logger.info(f"{flag} {path}: {len(rows)} of {len(dictionary)} tokens have a pre-trained vector")
        return build_masked_embedding(opts, len(dictionary), dim, dictionary.pad(), f"{side}.embed_tokens",
                                      pretrained, rows)

    def forward(self, src_tokens, src_lengths, prev_output_tokens, **kwargs):
        if self.training:  # the IteRand rounds due since the last update (none when it is off)
            self.rerandomizer.catch_up()
        # A shared embedding is used up to three times per step; mask it once.
        with contextlib.ExitStack() as stack:
            for emb in {id(e): e for e in (self.encoder.embed_tokens, self.decoder.embed_tokens)}.values():
                stack.enter_context(emb.one_weight_per_forward())
            return super().forward(src_tokens, src_lengths, prev_output_tokens, **kwargs)

    # -- checkpoints record their masking options; loading checks them (checkpoint_options.py) --
    def get_extra_state(self):
        return record_tensor(getattr(self, "recorded_options", None))

    def set_extra_state(self, state):
        pass  # checked in load_state_dict, before anything is copied

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        state_dict = checked_state_dict(self, state_dict, strict)
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)

    def train(self, mode: bool = True):
        if mode:  # at the latest before the first step, whose errors would first save a crash.pt
            self.check_masks_once()
        return super().train(mode)

    def max_positions(self):
        # fairseq-train asks this once the checkpoint is restored and before its data-loader
        # workers start (an error after that ends in their shutdown traceback); decoding asks in
        # eval mode, where a trained model is never refused.
        if self.training:
            self.check_masks_once()
        return super().max_positions()

    def check_masks_once(self):
        if not getattr(self, "masks_checked", True):
            check_every_mask_keeps_a_weight(self)
            self.masks_checked = True

    def set_num_updates(self, num_updates):
        super().set_num_updates(num_updates)
        monitor = getattr(self, "mask_monitor", None)
        if monitor is not None and self.training:
            monitor.step(self, num_updates)


def check_every_mask_keeps_a_weight(model) -> None:
    """Refuses a threshold that no score of some matrix passes: that matrix would train as zeros.
    (A top-k mask keeps at least one weight by construction.)"""
    mask = model.mask_options.mask
    if mask.method in TOPK_METHODS:
        return
    for name, scores in model.named_parameters():
        if not is_scores(name):
            continue
        kept = mask.kept(scores.detach())
        per_matrix = kept.reshape(kept.shape[0], -1) if kept.dim() >= 3 else kept.reshape(1, -1)
        if not bool(per_matrix.any(dim=1).all()):
            low, high = float(scores.detach().min()), float(scores.detach().max())
            raise OptionError(
                f"--prune-method {mask.method} --mask-threshold {mask.threshold} keeps no weight of "
                f"{module_of(name)}: its scores are between {low:.4g} and {high:.4g} (--mask-init "
                f"{model.mask_options.score_init.method}); choose a threshold that some of them pass")


def layer_weight_groups(model):
    """[(RandomWeight, the virtual layers' masked matrices over it)] of the model's layer matrices."""
    groups = {}
    for path, module in model.named_modules():
        if isinstance(module, MaskedWeight) and module.is_masked and parse_module_path(path)[1] is not None:
            random = module.random_source
            groups.setdefault(id(random), (random, []))[1].append(module)
    return list(groups.values())


def _make_architecture(name, embed_dim, ffn_dim, heads, layers, extra):
    def arch(args):
        args.encoder_embed_dim = safe_getattr(args, "encoder_embed_dim", embed_dim)
        args.encoder_ffn_embed_dim = safe_getattr(args, "encoder_ffn_embed_dim", ffn_dim)
        args.encoder_attention_heads = safe_getattr(args, "encoder_attention_heads", heads)
        args.encoder_layers = safe_getattr(args, "encoder_layers", layers)
        args.decoder_embed_dim = safe_getattr(args, "decoder_embed_dim", args.encoder_embed_dim)
        args.decoder_ffn_embed_dim = safe_getattr(args, "decoder_ffn_embed_dim", args.encoder_ffn_embed_dim)
        args.decoder_attention_heads = safe_getattr(args, "decoder_attention_heads", heads)
        args.decoder_layers = safe_getattr(args, "decoder_layers", layers)
        for key, value in extra.items():
            setattr(args, key, safe_getattr(args, key, value))

    arch.__name__ = name
    register_model_architecture(MODEL_NAME, name)(arch)


for _name, _shape in ARCHITECTURES.items():
    _make_architecture(_name, *_shape)
