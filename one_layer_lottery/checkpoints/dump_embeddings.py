"""Dump a trained fairseq Transformer's token embeddings in the text format that
``--encoder-embed-path`` / ``--decoder-embed-path`` read (the paper's "fixed pre-trained
embedding layer" runs).

    python -m one_layer_lottery.dump_embeddings CHECKPOINT OUT_PREFIX [--data DATA_DIR]

writes OUT_PREFIX.encoder.txt (source dictionary) and OUT_PREFIX.decoder.txt (target dictionary):
a header ``<count> <dim>``, then one line per dictionary entry, ``token v1 ... vd``. The raw
embedding table is written (fairseq scales it by sqrt(dim) at run time, as the one-layer model
does with a pre-trained table). Tokens come from the dictionaries of the checkpoint's data
directory (``cfg.task.data``), or of DATA_DIR. Each file is written to a temporary name and renamed.
"""
import argparse
import os
from typing import Dict, Tuple

import torch
from fairseq.data import Dictionary, data_utils

from ..atomic import check_output, output_directory
from ..console import ToolError, quiet_logging, tool_errors
from ..fairseq_checkpoint import config_section
from ..model_files import load_checkpoint_state
from ..models.one_layer_transformer.embedding_file import write_embeddings
from ..models.one_layer_transformer.state_keys import STACKS, embedding_key, random_embedding_key


class DumpError(ToolError):
    pass


def _task_cfg(state) -> dict:
    task = config_section(state, "task")
    if not task:
        raise DumpError("the checkpoint has no task configuration (cfg.task): pass --data")
    return task


def _languages(data: str, task: dict) -> Tuple[str, str]:
    src, tgt = task.get("source_lang"), task.get("target_lang")
    if src and tgt:
        return src, tgt
    src, tgt = data_utils.infer_language_pair(data)
    if not (src and tgt):
        raise DumpError(f"cannot tell the source and target languages of {data} (no <split>.<src>-<tgt>.* files)")
    return src, tgt


def embedding_tables(checkpoint: str, data: str = None) -> Dict[str, Tuple[list, torch.Tensor]]:
    """{"encoder": (tokens, weight), "decoder": (tokens, weight)} of a fairseq Transformer checkpoint."""
    state = load_checkpoint_state(checkpoint)
    model = state["model"]
    if random_embedding_key("encoder") in model:
        raise DumpError(f"{checkpoint}: is a one_layer_transformer (random embeddings): dump the embeddings of a "
                        "trained dense fairseq transformer instead")
    missing = [embedding_key(side) for side in STACKS if embedding_key(side) not in model]
    if missing:
        raise DumpError(f"{checkpoint}: no {', '.join(missing)} in the model state (not a fairseq Transformer?)")
    task = _task_cfg(state)
    data = data or str(task.get("data") or "")
    data = data.split(os.pathsep)[0]
    if not data or not os.path.isdir(data):
        raise DumpError(f"the data directory {data or '(none recorded)'} of {checkpoint} is not there: "
                        "pass --data with the directory holding its dict.*.txt")
    src, tgt = _languages(data, task)
    tables = {}
    for side, lang in (("encoder", src), ("decoder", tgt)):
        path = os.path.join(data, f"dict.{lang}.txt")
        if not os.path.isfile(path):
            raise DumpError(f"{path} is missing (the {side} dictionary)")
        dictionary = Dictionary.load(path)
        weight = model[embedding_key(side)].float()
        if weight.shape[0] != len(dictionary):
            raise DumpError(f"{embedding_key(side)} has {weight.shape[0]} rows but {path} has {len(dictionary)} "
                            "entries: this is not the checkpoint's dictionary")
        tables[side] = ([dictionary[i] for i in range(len(dictionary))], weight)
    return tables


def dump_embeddings(checkpoint: str, out_prefix: str, data: str = None) -> Dict[str, str]:
    """Write both tables; returns their paths. OUT_PREFIX's folder is created if needed, and neither
    file is written unless both can be."""
    tables = embedding_tables(checkpoint, data)
    output_directory(os.path.dirname(out_prefix) or os.curdir)
    written = {side: f"{out_prefix}.{side}.txt" for side in tables}
    for path in written.values():
        check_output(path, [checkpoint])
    for side, (tokens, weight) in tables.items():
        write_embeddings(written[side], tokens, weight, inputs=[checkpoint])
    return written


def main(argv=None):
    quiet_logging()
    parser = argparse.ArgumentParser(prog="python -m one_layer_lottery.dump_embeddings", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a trained fairseq transformer checkpoint")
    parser.add_argument("out_prefix", help="writes OUT_PREFIX.encoder.txt and OUT_PREFIX.decoder.txt")
    parser.add_argument("--data", help="data directory with the dict.*.txt (default: the checkpoint's cfg.task.data)")
    args = parser.parse_args(argv)
    with tool_errors("dump_embeddings"):
        written = dump_embeddings(args.checkpoint, args.out_prefix, args.data)
    print(f"--encoder-embed-path {written['encoder']} --decoder-embed-path {written['decoder']}")
