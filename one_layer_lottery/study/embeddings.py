"""The embedding table that a run lends to others (``embeddings_from``), kept beside its result.

A compressed numpy file (no pickles) with the tokens and rows of the run's best checkpoint, so a run
that uses them needs neither that checkpoint nor the machine it was trained on. With shared
embeddings the decoder's table is the encoder's and is stored once.
"""
import hashlib
import os
from typing import Dict

import numpy as np
import torch

from ..atomic import atomic_output, output_directory
from ..checkpoints.dump_embeddings import embedding_tables
from ..console import ToolError
from ..models.one_layer_transformer.embedding_file import write_embeddings

SIDES = ("encoder", "decoder")


class EmbeddingTableError(ToolError):
    pass


def save(checkpoint: str, path: str, data: str) -> None:
    tables = embedding_tables(checkpoint, data)
    arrays = {}
    for side in SIDES:
        tokens, weight = tables[side]
        if side == "decoder" and tokens == tables["encoder"][0] and torch.equal(weight, tables["encoder"][1]):
            continue
        arrays[f"{side}_tokens"] = np.array(tokens, dtype=str)
        arrays[side] = weight.numpy()
    output_directory(os.path.dirname(os.path.abspath(path)))
    with atomic_output(path, inputs=[checkpoint]) as tmp:
        with open(tmp, "wb") as f:  # a file object: savez would add .npz to a name without it
            np.savez_compressed(f, **arrays)


def digest(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def write_text_files(path: str, out_prefix: str) -> Dict[str, str]:
    """The table as ``OUT_PREFIX.encoder.txt`` / ``.decoder.txt`` in fairseq's text format."""
    try:
        with np.load(path, allow_pickle=False) as table:
            arrays = {key: table[key] for key in table.files}
    except (OSError, ValueError) as e:
        raise EmbeddingTableError(f"{path}: not an embedding table ({e})") from None
    if "encoder" not in arrays or "encoder_tokens" not in arrays:
        raise EmbeddingTableError(f"{path}: not an embedding table (no encoder rows)")
    written = {}
    for side in SIDES:
        source = side if side in arrays else "encoder"
        written[side] = f"{out_prefix}.{side}.txt"
        write_embeddings(written[side], [str(t) for t in arrays[f"{source}_tokens"]],
                         torch.from_numpy(arrays[source]))
    return written
