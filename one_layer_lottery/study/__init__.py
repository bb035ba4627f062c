"""Declarative experiment studies over fairseq: run what is missing, then tabulate and plot the results.

    python -m one_layer_lottery.study run   STUDY.yaml [RUN_OR_EXPERIMENT ...] [--commit]
    python -m one_layer_lottery.study table STUDY.yaml [--out TABLE.md] [--into DOC.md]
    python -m one_layer_lottery.study plot  STUDY.yaml OUT.png
"""
