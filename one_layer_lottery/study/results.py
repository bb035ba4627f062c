"""The result file of one finished run (``<results>/<run id>.json``): writing and checked reading."""
import json
import os

from ..atomic import atomic_output, output_directory
from ..console import ToolError
from .spec import read_parsed

# Every field a finished run records; a file missing one is reported as partial. `train_curve` is
# null where the training log was not kept; `embeddings` is null unless the run takes another's.
FIELDS = ("id", "experiment", "seed", "about", "flags", "command", "commit", "valid", "test", "train",
          "train_curve", "embeddings", "wall_s", "finished")
# Recorded by newer runs only, read with these defaults from older files. `compact_bytes`: the size of
# a one-layer run's compact subnetwork file (None for dense); `probe`: validation only, `test` is null.
OPTIONAL_FIELDS = {"compact_bytes": None, "probe": False}
TEST_FIELDS = ("bleu_tokenised", "sacrebleu", "sacrebleu_signature", "length_ratio", "brevity_penalty",
               "sentences", "checkpoint_update")


class ResultError(ToolError):
    """A result file that cannot be read; the message names the file."""


def write(path: str, result: dict) -> None:
    missing = [k for k in FIELDS if k not in result]
    if missing:
        raise ValueError(f"result for {path} lacks {missing}")
    output_directory(os.path.dirname(os.path.abspath(path)))
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
            f.write("\n")


def read(path: str) -> dict:
    result = read_parsed(path, json.loads, (ValueError,), ResultError,
                         "is not valid JSON (delete it to run the experiment again)")
    if not isinstance(result, dict):
        raise ResultError(f"{path}: not a result object")
    missing = [k for k in FIELDS if k not in result]
    if not missing and not result.get("probe"):
        test = result["test"] if isinstance(result["test"], dict) else {}
        missing = [f"test.{k}" for k in TEST_FIELDS if k not in test]
    if missing:
        raise ResultError(f"{path}: partial result, missing {', '.join(missing)}; delete it to run the "
                          "experiment again")
    for key, default in OPTIONAL_FIELDS.items():
        result.setdefault(key, default)
    return result


def best_validation(result: dict) -> tuple:
    """(best validation BLEU, its update) of a result."""
    scored = [v for v in result["valid"] if v["bleu"] is not None]
    best = max(scored, key=lambda v: v["bleu"])
    return best["bleu"], best["update"]
