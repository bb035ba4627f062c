"""fairseq's hub interface over a pretrained directory, with its training data's preprocessing.

The Multi30k data the shipped subnetwork learned from was lowercased, tokenised by sacremoses
(no escaping, no aggressive dash splits) and cut into sentencepiece pieces; ``load`` sets up
fairseq's own ``moses`` tokenizer and ``sentencepiece`` BPE the same way and lowercases first, so
``translate`` takes raw German and returns detokenised (lowercase) English.
"""
import logging
import os
import warnings

import torch
from fairseq.hub_utils import GeneratorHubInterface
from omegaconf import OmegaConf, open_dict

from ..console import ToolError
from ..model_files import COMPACT, open_model_file
from ..study.runner import REPO_ROOT
from ..subnetwork import compact

DEFAULT_DIR = os.path.join(REPO_ROOT, "data", "pretrained")
MODEL_FILE = "model.olls"
SENTENCEPIECE_FILE = "spm.model"

logger = logging.getLogger(__name__)


def preprocessing(sentencepiece_model: str, source_lang: str, target_lang: str) -> dict:
    """fairseq's tokenizer and bpe configs for text prepared as the training data was (after lowercasing)."""
    return {"tokenizer": {"_name": "moses", "source_lang": source_lang, "target_lang": target_lang,
                          "moses_no_dash_splits": True, "moses_no_escape": True},
            "bpe": {"_name": "sentencepiece", "sentencepiece_model": os.fspath(sentencepiece_model)}}


class Translator(GeneratorHubInterface):
    """fairseq's GeneratorHubInterface that lowercases before tokenising, as the training data was,
    translates the first positions of a sentence longer than the model takes (with a warning), and
    keeps torch's warning about pinned memory on a CPU-only machine quiet."""

    def tokenize(self, sentence: str) -> str:
        return super().tokenize(sentence.lower())

    def encode(self, sentence: str) -> torch.LongTensor:
        tokens = super().encode(sentence)
        limit = self.max_source_tokens()
        if len(tokens) > limit:
            logger.warning(f"a sentence of {len(tokens) - 1} tokens is longer than the model takes: translating "
                           f"its first {limit - 1} ({' '.join(sentence.split()[:5])} ...)")
            tokens = torch.cat([tokens[: limit - 1], tokens[-1:]])  # keep the end-of-sentence token
        return tokens

    def generate(self, *args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pin_memory.*")  # fairseq's batches on a CPU-only machine
            return super().generate(*args, **kwargs)

    def max_source_tokens(self) -> int:
        """The longest source the model takes, end-of-sentence token included."""
        limit = self.max_positions
        return int(limit[0] if isinstance(limit, (tuple, list)) else limit)


def load(path=DEFAULT_DIR) -> Translator:
    """The pretrained model in directory ``path`` (its compact file and sentencepiece model), on CPU,
    as fairseq's hub interface: ``load().translate("ein mann fährt fahrrad .")``. A missing or bad
    file raises ToolError naming it."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ToolError(f"{path}: not a directory (expected a pretrained model directory with {MODEL_FILE} "
                        f"and {SENTENCEPIECE_FILE})")
    sentencepiece_model = os.path.join(path, SENTENCEPIECE_FILE)
    if not os.path.isfile(sentencepiece_model):
        raise ToolError(f"{sentencepiece_model}: no such file (the sentencepiece model of the subnetwork's data)")
    _, parsed = open_model_file(os.path.join(path, MODEL_FILE), (COMPACT,))
    model, cfg, task = compact.load_parsed(parsed)
    cfg = OmegaConf.create(cfg)
    with open_dict(cfg):
        cfg.update(preprocessing(sentencepiece_model, task.cfg.source_lang, task.cfg.target_lang))
    try:
        return Translator(cfg, task, [model])
    except (RuntimeError, OSError) as e:  # sentencepiece refuses the file
        detail = " ".join(str(e).split())[:160]
        raise ToolError(f"{sentencepiece_model}: not a sentencepiece model ({detail})") from None
