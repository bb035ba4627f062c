"""Masking primitives (pure PyTorch, no fairseq import)."""
from .init import (
    ATTENTION_INITS,
    MASK_INITS,
    WEIGHT_INITS,
    ScoreInit,
    WeightInit,
    attention_init,
    embedding_normal_init,
    masked_weight_init,
    pretrained_embedding_scale,
)
from .modules import (
    MaskConfig,
    MaskedEmbedding,
    MaskedLinear,
    MaskedWeight,
    RandomWeight,
    SharedScores,
    TiedLinear,
    straight_through_mask,
)
from .selection import PRUNE_METHODS, naive_edge_popup_mask, num_kept, select_mask, selects_on_host, topk_mask

__all__ = [
    "ATTENTION_INITS", "MASK_INITS", "WEIGHT_INITS", "PRUNE_METHODS", "ScoreInit", "WeightInit",
    "attention_init", "embedding_normal_init", "masked_weight_init", "pretrained_embedding_scale",
    "MaskConfig", "MaskedEmbedding", "MaskedLinear", "MaskedWeight", "RandomWeight", "SharedScores",
    "TiedLinear", "straight_through_mask",
    "naive_edge_popup_mask", "num_kept", "select_mask", "selects_on_host", "topk_mask",
]
