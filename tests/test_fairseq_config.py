"""The tests' fairseq-train configs (tests/fairseq_config.py) are fairseq's own, value for value."""
import pytest

import one_layer_lottery  # noqa: F401  (registers the model)
from conftest import USER_DIR
from fairseq_config import ComposeOncePerShape, convert

BASE = ("--arch", "one_layer_transformer_iwslt_de_en", "--optimizer", "adam", "--lr", "5e-3")
# Each differs from BASE in values only: numbers, choices, flags, tuples, lists, paths (one with a
# quote), an option that is unset in BASE.
SAME_SHAPE = [
    ("--seed", "3"),
    ("--prune-ratio", "0.3", "--init", "signed_constant", "--attention-init", "fairseq_xavier"),
    ("--share-all-embeddings", "--dropout", "0", "--encoder-normalize-before"),
    ("--adam-betas", "(0.9, 0.98)", "--lr", "1e-3", "--max-tokens", "1000", "--cpu"),
    ("--encoder-embed-path", "/data/it's here.txt", "--save-dir", "/tmp/run 1"),
    ("--encoder-embed-dim", "32", "--encoder-layers", "3", "--mask-coats", "2", "--prune-method", "super_mask"),
]
# Another optimizer and criterion: other groups, another shape.
OTHER_SHAPE = ("--optimizer", "sgd", "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1")


def parsed(data, flags):
    from fairseq import options

    argv = [str(data), "--user-dir", USER_DIR, *BASE, *flags]
    return options.parse_args_and_arch(options.get_training_parser(), argv)


def fairseqs_own(args):
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    return convert_namespace_to_omegaconf(args)


def same(a, b):
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(a) == OmegaConf.to_yaml(b) and OmegaConf.is_struct(a) == OmegaConf.is_struct(b)


class CountingCompose(ComposeOncePerShape):
    def __init__(self):
        super().__init__()
        self.hydra_calls = 0

    def __call__(self, real_compose, *args, **kwargs):
        def counted(*a, **k):
            self.hydra_calls += 1
            return real_compose(*a, **k)

        return super().__call__(counted, *args, **kwargs)


@pytest.fixture(scope="module")
def primed(tmp_path_factory):
    """A composer that has composed BASE (Hydra's one call so far), the data folder and BASE's config."""
    data = tmp_path_factory.mktemp("data")
    composer = CountingCompose()
    first = convert(parsed(data, ()), composer)
    assert composer.hydra_calls == 1
    return composer, data, first


def test_the_first_command_line_of_a_shape_is_composed_by_hydra(primed):
    _, data, first = primed
    assert same(first, fairseqs_own(parsed(data, ())))


@pytest.mark.parametrize("flags", SAME_SHAPE, ids=lambda f: f[0])
def test_a_command_line_of_a_known_shape_gets_fairseqs_config_without_composing(flags, primed):
    composer, data, first = primed
    calls = composer.hydra_calls
    config = convert(parsed(data, flags), composer)
    assert composer.hydra_calls == calls  # reused the composition of BASE
    assert same(config, fairseqs_own(parsed(data, flags)))
    assert not same(config, first)  # the flags made a difference


def test_other_groups_are_another_shape(primed):
    composer, data, _ = primed
    calls = composer.hydra_calls
    config = convert(parsed(data, OTHER_SHAPE), composer)
    assert composer.hydra_calls == calls + 1
    assert config.optimizer._name == "sgd" and config.criterion._name == "label_smoothed_cross_entropy"
    assert same(config, fairseqs_own(parsed(data, OTHER_SHAPE)))


def outcome(convert_args):
    try:
        return "config", convert_args()
    except Exception as e:  # noqa: BLE001  (whatever fairseq raises, ours must raise the same)
        return type(e), str(e)


# What fairseq's argument parser does not give, set on the parsed arguments: a string where a number
# belongs and a list (refused), an interpolation and a float for an int (accepted as Hydra accepts them).
@pytest.mark.parametrize("max_tokens", ["'many'", [1, 2], "${common.seed}", 1.5])
def test_odd_values_are_refused_or_taken_as_fairseq_does(max_tokens, primed):
    composer, data, _ = primed
    calls = composer.hydra_calls
    odd = parsed(data, ())
    odd.max_tokens = max_tokens
    ours, theirs = outcome(lambda: convert(odd, composer)), outcome(lambda: fairseqs_own(odd))
    assert composer.hydra_calls == calls
    if theirs[0] == "config":
        assert ours[0] == "config" and same(ours[1], theirs[1])
    else:
        assert ours == theirs and "dataset.max_tokens" in ours[1]
