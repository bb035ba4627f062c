"""The paper's WMT14 batch (8 GPUs x 4096 tokens per update) on any number of GPUs.

With W workers, the update frequency is ceil(8 x 4096 / (W x 4096)); when W does not divide 8, the
tokens per worker batch shrink to ceil(8 x 4096 / (W x update_freq)), so that one update still sees
about 8 x 4096 tokens (3 GPUs: 3 x 3 x 3641 = 32769). scripts/train_wmt14.sh does the same arithmetic.

The WMT14 Hydra configs compute their ``optimization.update_freq`` and ``dataset.max_tokens`` from
``distributed_training.distributed_world_size`` with the OmegaConf resolvers below. Importing this
module registers them; the configs import it through a Hydra callback (``hydra.callbacks``), which
runs before fairseq-hydra-train resolves the config.
"""
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

PAPER_TOKENS_PER_UPDATE = 8 * 4096
PAPER_MAX_TOKENS = 4096


def _positive(name, value):
    value = int(value)
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return value


def update_freq(world_size, tokens_per_update=PAPER_TOKENS_PER_UPDATE, max_tokens=PAPER_MAX_TOKENS) -> int:
    """Batches per update so that world_size x update_freq x max_tokens >= tokens_per_update."""
    world_size = _positive("the distributed world size", world_size)
    per_step = world_size * _positive("max_tokens", max_tokens)
    return -(-_positive("tokens per update", tokens_per_update) // per_step)


def max_tokens(world_size, tokens_per_update=PAPER_TOKENS_PER_UPDATE, max_tokens=PAPER_MAX_TOKENS) -> int:
    """Tokens per worker batch: ``max_tokens``, or fewer when world_size does not divide
    tokens_per_update / max_tokens, so that an update sees about tokens_per_update tokens."""
    world_size = _positive("the distributed world size", world_size)
    steps = world_size * update_freq(world_size, tokens_per_update, max_tokens)
    return -(-_positive("tokens per update", tokens_per_update) // steps)


RESOLVERS = {"paper_batch.update_freq": update_freq, "paper_batch.max_tokens": max_tokens}


def register_resolvers():
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()


class RegisterResolvers(Callback):
    """Hydra callback (``hydra.callbacks.<any>._target_``): importing this module registered the resolvers."""

    def __init__(self, *args, **kwargs):
        register_resolvers()
