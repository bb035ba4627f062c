"""A pretrained directory from a study's result file and its run's best checkpoint, and the check
that it still scores the test BLEU the result file records.

The directory holds the compact file (export compact: seed, init recipe, one bit per weight per
virtual layer, the dictionary), the sentencepiece model of the data, ``provenance.json`` and a
README for users. Paths in the provenance are relative to the project's root.
"""
import json
import os
import shlex
import shutil
import tempfile

from ..atomic import atomic_output, output_directory, write_text
from ..console import ToolError
from ..export import expand, export_compact
from ..study import results
from ..study.embeddings import digest
from ..study.runner import REPO_ROOT, RunError, generate_test_set, read_generation
from ..subnetwork.file_reader import read as read_compact
from .hub import DEFAULT_DIR, MODEL_FILE, SENTENCEPIECE_FILE

PROVENANCE_FILE = "provenance.json"
README_FILE = "README.md"
MULTI30K_TERMS = ("Multi30k (descriptions of Flickr30k images) is distributed for research use, without an explicit "
                  "licence file: use this model for research, and cite Elliott et al. (2016), \"Multi30K: "
                  "Multilingual English-German Image Descriptions\". The sentencepiece model and the dictionary "
                  "were trained on its training text.")


def from_root(path: str) -> str:
    """A path as the provenance records it: relative to the project's root."""
    return os.path.relpath(os.path.abspath(path), REPO_ROOT)


def in_root(recorded: str) -> str:
    """A path the provenance or a result file records, as a path here."""
    return os.path.normpath(os.path.join(REPO_ROOT, recorded))


def best_checkpoint(result: dict, where: str) -> str:
    """The best checkpoint of a result file's run: ``checkpoint_best.pt`` in its recorded --save-dir."""
    command = result["command"]
    if "--save-dir" not in command[:-1]:
        raise ToolError(f"{where}: its training command has no --save-dir; pass --checkpoint")
    return os.path.join(in_root(command[command.index("--save-dir") + 1]), "checkpoint_best.pt")


def build(result_path: str, out_dir: str = DEFAULT_DIR, checkpoint: str = None, data: str = None,
          data_terms: str = MULTI30K_TERMS) -> dict:
    """Write the pretrained directory of the run ``result_path`` records; returns its provenance.

    ``checkpoint``: default, the run's best checkpoint; ``data``: default, the data directory of its
    training command (its dictionaries and ``spm.model``).
    """
    result = results.read(result_path)
    checkpoint = checkpoint or best_checkpoint(result, result_path)
    data = data or in_root(result["command"][0])
    sentencepiece_model = os.path.join(data, SENTENCEPIECE_FILE)
    if not os.path.isfile(sentencepiece_model):
        raise ToolError(f"{sentencepiece_model}: no such file (the data's sentencepiece model)")
    output_directory(out_dir)
    model_path = os.path.join(out_dir, MODEL_FILE)
    export_compact(checkpoint, model_path, data)
    with atomic_output(os.path.join(out_dir, SENTENCEPIECE_FILE), inputs=[sentencepiece_model]) as tmp:
        shutil.copyfile(sentencepiece_model, tmp)
    header = read_compact(model_path).header
    test = result["test"]
    provenance = {
        "result_file": from_root(result_path), "run": result["id"], "commit": result["commit"],
        "test": {k: test[k] for k in ("bleu_tokenised", "sacrebleu", "sacrebleu_signature", "sentences",
                                       "checkpoint_update", "generate_flags") if k in test},
        "training_command": ["fairseq-train", *result["command"]], "seed": result["seed"],
        "data": from_root(data), "checkpoint": from_root(checkpoint),
        "files": {name: {"bytes": os.path.getsize(os.path.join(out_dir, name)),
                         "sha256": digest(os.path.join(out_dir, name))}
                  for name in (MODEL_FILE, SENTENCEPIECE_FILE)},
        "compact": {"arch": header["arch"], "seed": header["seed"], "init": header["init"], "mask": header["mask"],
                    "random_weights": {k: header["random_weights"][k] for k in ("sha256", "numel")},
                    "stored_tensors": [entry["names"][0] for entry in header["tensors"]],
                    "num_updates": header["source"].get("num_updates")},
    }
    write_text(os.path.join(out_dir, PROVENANCE_FILE), json.dumps(provenance, indent=1, ensure_ascii=False) + "\n")
    write_text(os.path.join(out_dir, README_FILE), readme(provenance, out_dir, data_terms))
    return provenance


def readme(provenance: dict, out_dir: str, data_terms: str) -> str:
    """The directory's README for users."""
    test, compact = provenance["test"], provenance["compact"]
    sizes = {name: entry["bytes"] for name, entry in provenance["files"].items()}
    commit = provenance["commit"].get("commit") or "unknown"
    if provenance["commit"].get("dirty"):
        commit += "` with uncommitted changes to the package or configs, `"
    model_dir = from_root(out_dir)
    shipped = os.path.abspath(out_dir) == os.path.abspath(DEFAULT_DIR)
    load_call = "load()" if shipped else f'load("{model_dir}")'
    stored = len(compact["stored_tensors"])
    trained = f" and {stored} trained or pre-trained tensors" if stored else ""
    return f"""# A German to English translator found in random weights

`{MODEL_FILE}` ({sizes[MODEL_FILE]} bytes) is a one-layer randomly weighted Transformer
(`{compact['arch']}`): every weight is drawn from seed {compact['seed']} by a fixed recipe
(`{compact['init']['weight_init']}`, attention `{compact['init']['attention_init']}`) and never trained;
what was learned is which weights each virtual layer keeps (one bit per weight,
{compact['mask']['method']}, prune ratio {compact['mask']['prune_ratio']}){trained}. The file also holds the dictionary;
`{SENTENCEPIECE_FILE}` ({sizes[SENTENCEPIECE_FILE]} bytes) is the sentencepiece model of its data.
Loading rebuilds the random weights from the seed and checks their sha256
(`{compact['random_weights']['sha256']}`, recorded in `{PROVENANCE_FILE}`).

Test BLEU: **{test['bleu_tokenised']}** tokenised, {test['sacrebleu']} sacreBLEU (`{test['sacrebleu_signature']}`),
over {test['sentences']} test sentences, as recorded in `{provenance['result_file']}`
(run `{provenance['run']}`, commit `{commit}`), with the checkpoint of update {test['checkpoint_update']}
chosen on validation BLEU, decoded by `fairseq-generate {' '.join(test.get('generate_flags', []))}`.

## Use

```bash
python -c 'from one_layer_lottery.pretrained import load; print({load_call}.translate("ein mann fährt fahrrad ."))'
echo "Zwei Hunde spielen im Schnee." | python -m one_layer_lottery.translate --model {model_dir}
```

`load()` returns fairseq's `GeneratorHubInterface`. Input is lowercased, tokenised by sacremoses
(no escaping, no aggressive dash splits) and cut into sentencepiece pieces, as the training data
was; the output is detokenised lowercase English.

## How it was trained

```
{shlex.join(provenance['training_command'])}
```

## Data

Trained on `{provenance['data']}`. {data_terms}

## Rebuild

From the result file and its run's best checkpoint (`{provenance['checkpoint']}`):

```bash
python -m one_layer_lottery.pretrained build {provenance['result_file']} {model_dir}
python -m one_layer_lottery.pretrained check {model_dir}     # decodes the test set again: same BLEU
```
"""


def check(model_dir: str = DEFAULT_DIR) -> dict:
    """Decode the test set with the directory's compact file exactly as the study scored its run;
    returns the tokenised BLEU found, the one recorded and the hypotheses."""
    provenance_path = os.path.join(model_dir, PROVENANCE_FILE)
    try:
        with open(provenance_path, encoding="utf-8") as f:
            provenance = json.load(f)
    except (OSError, ValueError) as e:
        raise ToolError(f"{provenance_path}: cannot read the provenance ({e})") from None
    data, test = in_root(provenance["data"]), provenance["test"]
    if "generate_flags" not in test:
        raise ToolError(f"{provenance_path}: records no fairseq-generate flags, so the test set cannot be decoded "
                        "as the study scored it")
    if not os.path.isdir(data):
        raise ToolError(f"{data}: not a directory (the binarized data the run was scored on)")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, log = os.path.join(tmp, "model.pt"), os.path.join(tmp, "generate.log")
        expand(os.path.join(model_dir, MODEL_FILE), checkpoint)
        try:
            generate_test_set(data, checkpoint, test["generate_flags"], provenance["seed"], log)
            found = read_generation(log, provenance["run"])
        except RunError as e:
            raise ToolError(" ".join(str(e).split("\n")[:1])) from None
    return {"bleu": found["bleu"], "recorded": test["bleu_tokenised"], "hypotheses": found["hypotheses"]}
