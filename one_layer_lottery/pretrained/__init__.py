"""A trained subnetwork shipped with the project (data/pretrained/), used the way fairseq's own
pre-trained models are:

    from one_layer_lottery.pretrained import load
    load().translate("ein mann fährt fahrrad .")

    python -m one_layer_lottery.pretrained build RESULT.json [OUT_DIR] [--checkpoint PT] [--data DIR]
    python -m one_layer_lottery.pretrained check [DIR]

``build`` writes a pretrained directory from a study's result file and its run's best checkpoint;
``check`` decodes the test set with it as the study scored the run and compares the BLEU. The
command line for translating files: ``python -m one_layer_lottery.translate``.
"""
from .hub import DEFAULT_DIR, Translator, load

__all__ = ["DEFAULT_DIR", "Translator", "load"]
