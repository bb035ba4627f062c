"""fairseq-train's config for a command line, as fairseq builds it, composed by Hydra once per shape.

fairseq turns parsed arguments into its config with ``convert_namespace_to_omegaconf``: Hydra
composes the ``config`` defaults with about 290 overrides, one per option, in about 0.35 s. The
tests build some 170 command lines. Command lines that select the same task, model, criterion,
optimizer and so on, and so give the same override keys in the same order (their *shape*), differ
only in the values of config keys. So Hydra composes the first command line of each shape; the next ones
start from a copy of that composition and get the overrides whose values differ, applied by the
step Hydra's own composition ends with (``ConfigLoaderImpl._apply_overrides_to_config``). The rest
of fairseq's conversion (deletions, resolution, legacy namespaces) runs unchanged.
tests/test_fairseq_config.py checks the result against fairseq's own conversion.
"""
import copy
import functools
from unittest import mock


class ComposeOncePerShape:
    """Stands in for Hydra's ``compose`` inside fairseq's conversion."""

    def __init__(self):
        self.composed = {}  # shape -> (overrides, composed config)

    @staticmethod
    def shape(config_name, overrides, strict):
        """The override keys in order, with the group selections' values ("model=transformer")."""
        return config_name, strict, tuple(o if "." not in o.split("=", 1)[0] else o.split("=", 1)[0]
                                          for o in overrides)

    def __call__(self, real_compose, config_name, overrides, strict=None):
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        shape = self.shape(config_name, overrides, strict)
        known = self.composed.get(shape)
        if known is None:
            cfg = real_compose(config_name, overrides=overrides, strict=strict)
            self.composed[shape] = (list(overrides), copy.deepcopy(cfg))
            return cfg
        known_overrides, known_cfg = known
        changed = [o for o, k in zip(overrides, known_overrides) if o != k]
        # the group selections are part of the shape: only values of config keys differ here
        cfg = copy.deepcopy(known_cfg)
        OmegaConf.set_struct(cfg, True)  # as compose applies them
        ConfigLoaderImpl._apply_overrides_to_config(OverridesParser.create().parse_overrides(changed), cfg)
        if strict is not None:
            OmegaConf.set_struct(cfg, strict)
        return cfg


_COMPOSE = ComposeOncePerShape()


def convert(args, composer=_COMPOSE):
    """fairseq's ``convert_namespace_to_omegaconf(args)``, composing once per shape (see above)."""
    import fairseq.dataclass.utils as fairseq_utils

    compose = functools.partial(composer, fairseq_utils.compose)
    with mock.patch.object(fairseq_utils, "compose", compose):
        return fairseq_utils.convert_namespace_to_omegaconf(args)


@functools.lru_cache(maxsize=None)
def training_config(argv):
    """fairseq-train's config for the command line ``argv`` (a tuple of strings), once per session;
    callers get a copy."""
    from fairseq import options

    return convert(options.parse_args_and_arch(options.get_training_parser(), list(argv)))
