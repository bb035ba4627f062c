"""The names in a one_layer_transformer's state dict, read in one place.

    encoder.layers.3.fc1.scores                 the scores of virtual layer 3's fc1
    encoder.shared.weights.fc1.weight           the random weight every layer's fc1 masks (layer_weights)
    encoder.shared.scores.self_attn_q_proj.scores  scores every layer shares (layer_mask)
    encoder.layers.3.fc1.random.weight          a layer's own random weight (layer_mask, none)
    encoder.embed_tokens.random.weight          the random (or pre-trained) embedding table
    _extra_state                                the masking options the checkpoint was trained under
    rerandomizer.rounds                         IteRand rounds done (only with --rerand-interval)

Module paths (``encoder.layers.3.fc1``) follow the same pattern without the tensor's name.
"""
import re
from typing import Optional, Tuple

EXTRA_STATE_KEY = "_extra_state"  # where nn.Module.state_dict puts the model's get_extra_state()
RERAND_ROUNDS_KEY = "rerandomizer.rounds"  # the model's Rerandomizer, its round count
STACKS = ("encoder", "decoder")
# Display order of the matrices of a layer.
MATRIX_ORDER = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                "encoder_attn.q_proj", "encoder_attn.k_proj", "encoder_attn.v_proj", "encoder_attn.out_proj",
                "fc1", "fc2")

_LAYER_PATH = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.(.+)$")
_SHARED_SCORES = re.compile(r"^(encoder|decoder)\.shared\.scores\.(.+)$")
_LAYER_NORM = re.compile(r"(^|\.)[a-z_]*layer_norm[a-z_]*\.(weight|bias)$")


def matrix_sort_key(name: str):
    return (MATRIX_ORDER.index(name) if name in MATRIX_ORDER else len(MATRIX_ORDER), name)


def parse_module_path(path: str) -> Tuple[str, Optional[int], str]:
    """(stack, virtual layer or None, matrix) of a module path such as ``encoder.layers.3.fc1``."""
    m = _LAYER_PATH.match(path)
    if m:
        return m.group(1), int(m.group(2)), m.group(3)
    stack, _, rest = path.partition(".")
    return stack, None, rest


def parse_shared_scores(path: str) -> Optional[Tuple[str, str]]:
    """(stack, matrix) of the scores every layer of a stack shares (``--share-mask layer_mask``),
    e.g. ``encoder.shared.scores.self_attn_q_proj`` -> ("encoder", "self_attn.q_proj"); else None."""
    m = _SHARED_SCORES.match(path)
    if not m:
        return None
    # SharedWeights registers "self_attn.q_proj" under the name "self_attn_q_proj".
    return m.group(1), re.sub(r"^(self_attn|encoder_attn)_", r"\1.", m.group(2))


def is_scores(key: str) -> bool:
    return key == "scores" or key.endswith(".scores")


def module_of(key: str) -> str:
    """The module path of a tensor's key: ``encoder.layers.3.fc1.scores`` -> ``encoder.layers.3.fc1``."""
    return key.rpartition(".")[0]


def is_random_weight(key: str) -> bool:
    """A frozen random weight: owned by a RandomWeight module (``...random.weight``) or by a
    stack's shared weights (``<stack>.shared.weights.<name>.weight``)."""
    return key.endswith(".random.weight") or ".shared.weights." in key


def is_layer_norm(key: str) -> bool:
    return bool(_LAYER_NORM.search(key))


def is_layer_matrix(key: str) -> bool:
    """A weight of a layer's attention or feed-forward matrix (``encoder.layers.0.fc1.weight``)."""
    stack, layer, matrix = parse_module_path(module_of(key))
    return layer is not None and matrix in MATRIX_ORDER and key.endswith(".weight")


def embedding_key(stack: str) -> str:
    """The token embedding table of a dense fairseq Transformer."""
    return f"{stack}.embed_tokens.weight"


def random_embedding_key(stack: str) -> str:
    """The token embedding table of a one_layer_transformer (random or pre-trained rows)."""
    return f"{stack}.embed_tokens.random.weight"


def embedding_prefix(stack: str) -> str:
    return f"{stack}.embed_tokens."
