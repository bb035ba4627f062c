"""A plain fairseq ``transformer`` equivalent to a one_layer_transformer: every masked matrix
materialised (zeros where masked), so that stock fairseq loads it without ``--user-dir``."""
import argparse
from typing import Any, Dict, Tuple

import torch
from fairseq import models
from fairseq.models.transformer.transformer_legacy import base_architecture
from omegaconf import OmegaConf
from torch import nn

from ..fairseq_checkpoint import decoding_checkpoint, plain
from ..masking import MaskedLinear, MaskedWeight, TiedLinear
from ..models.one_layer_transformer.options import resolve_options
from ..models.one_layer_transformer.state_keys import is_layer_matrix

# Options of our model that mean the same in fairseq's `transformer`.
TRANSFORMER_FIELDS = (
    "activation_fn", "dropout", "attention_dropout", "activation_dropout",
    "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_layers", "encoder_attention_heads",
    "encoder_normalize_before", "decoder_embed_dim", "decoder_ffn_embed_dim", "decoder_layers",
    "decoder_attention_heads", "decoder_normalize_before", "share_decoder_input_output_embed",
    "share_all_embeddings", "no_scale_embedding", "no_token_positional_embeddings",
    "max_source_positions", "max_target_positions",
)


def dense_model_cfg(model_cfg) -> Dict[str, Any]:
    """fairseq `transformer` options (a plain dict) with the shape of our ``model_cfg``."""
    ours = resolve_options(model_cfg)
    ns = argparse.Namespace(**{name: getattr(ours, name) for name in TRANSFORMER_FIELDS})
    ns.decoder_input_dim = ns.decoder_output_dim = ours.decoder_embed_dim
    # The embedding tables are in the state (pre-trained rows included): no file to read.
    ns.encoder_embed_path = ns.decoder_embed_path = None
    base_architecture(ns)
    return dict(plain(vars(ns), "model"), _name="transformer", arch="transformer")


def dense_state(model, dense: nn.Module) -> Dict[str, torch.Tensor]:
    """The state dict of the plain ``dense`` Transformer holding ``model``'s masked weights.

    Every masked matrix becomes its random weight times its mask (zeros where masked), per
    virtual layer; missing biases are zeros, LayerNorms without affine parameters get weight 1
    and bias 0, everything else (trained biases, LayerNorm affine, buffers) is copied.
    """
    model.eval()
    ours = dict(model.named_modules(remove_duplicate=False))
    our_state = model.state_dict()
    copies: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}  # id(source) -> (source kept alive, copy)
    state = {}
    with torch.no_grad():
        for key, ref in dense.state_dict().items():
            prefix, _, leaf = key.rpartition(".")
            module = ours.get(prefix)
            if isinstance(module, (MaskedWeight, TiedLinear)) and leaf == "weight":
                value = module.weight
            elif isinstance(module, MaskedLinear) and leaf == "bias":
                value = module.bias if module.bias is not None else torch.zeros_like(ref)
            elif isinstance(module, nn.LayerNorm) and not module.elementwise_affine and leaf in ("weight", "bias"):
                value = torch.ones_like(ref) if leaf == "weight" else torch.zeros_like(ref)
            elif key in our_state:
                value = our_state[key]
            else:
                raise ValueError(f"the plain Transformer's {key} has no counterpart in the masked model")
            if tuple(value.shape) != tuple(ref.shape):
                raise ValueError(f"{key}: the masked model gives shape {tuple(value.shape)}, the plain "
                                 f"Transformer expects {tuple(ref.shape)}")
            # Tied tensors (shared embeddings) stay one tensor in the file.
            if id(value) not in copies:
                copies[id(value)] = (value, value.detach().to(device="cpu", dtype=ref.dtype).clone().contiguous())
            state[key] = copies[id(value)][1]
    return state


def _probe_batch(task, n=3, src_len=9, tgt_len=7):
    gen = torch.Generator().manual_seed(0)
    src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
    src = torch.randint(src_dict.nspecial, len(src_dict), (n, src_len), generator=gen)
    src[:, -1] = src_dict.eos()
    prev = torch.randint(tgt_dict.nspecial, len(tgt_dict), (n, tgt_len), generator=gen)
    prev[:, 0] = tgt_dict.eos()
    return src, torch.full((n,), src_len, dtype=torch.long), prev


def check_same_outputs(model, dense, task, tolerance=1e-4) -> float:
    """Largest difference of the two models' output logits on a probe batch; raises above tolerance."""
    src, lengths, prev = _probe_batch(task)
    with torch.no_grad():
        a = model(src, lengths, prev)[0]
        b = dense(src, lengths, prev)[0]
    diff = float((a - b).abs().max())
    if not diff <= tolerance * max(1.0, float(a.abs().max())):
        raise RuntimeError(f"the exported plain Transformer's outputs differ from the masked model's by {diff}")
    return diff


def dense_checkpoint(model, cfg, task, num_updates=None):
    """(plain checkpoint dict, info) of the fairseq `transformer` equivalent to ``model``."""
    full = plain(cfg)
    dense_cfg = dense_model_cfg(full["model"])
    dense = models.build_model(OmegaConf.create(dense_cfg), task).eval()
    state = dense_state(model, dense)
    dense.load_state_dict(state, strict=True)
    diff = check_same_outputs(model, dense, task)

    full["model"] = dense_cfg
    full["common"] = dict(full.get("common") or {}, user_dir=None)
    ckpt = decoding_checkpoint(full, state, num_updates)
    plain({k: v for k, v in ckpt.items() if k != "model"}, "checkpoint")  # refuses anything not plain
    layer_weights = [t for k, t in state.items() if is_layer_matrix(k)]
    zeros = sum(int((t == 0).sum()) for t in layer_weights)
    total = sum(t.numel() for t in layer_weights)
    return ckpt, {"max_logit_difference": diff, "layer_weight_zero_fraction": zeros / max(total, 1), "model": dense}
