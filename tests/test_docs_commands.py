"""The dense-baseline commands of docs/wmt14.md and docs/iwslt14.md, parsed by fairseq-train's own
parser: their checkpoint_best.pt is chosen by validation BLEU, not by loss."""
import re
import shlex

import pytest

from conftest import ROOT

DOCS = {"wmt14.md": "transformer_wmt_en_de", "iwslt14.md": "transformer_iwslt_de_en"}


def shell_commands(markdown):
    """The commands of the ```bash blocks (continuation lines joined, comments dropped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        for command in re.sub(r"\\\n\s*", " ", block).split("\n"):
            words = shlex.split(command, comments=True)
            if words:
                commands.append(words)
    return commands


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_dense_baseline_selects_its_checkpoint_by_validation_bleu(doc):
    from fairseq import options

    dense = [c for c in shell_commands((ROOT / "docs" / doc).read_text()) if c[0] == "fairseq-train"
             and c[c.index("--arch") + 1].startswith("transformer")]
    assert len(dense) == 1, dense
    args = options.parse_args_and_arch(options.get_training_parser(), dense[0][1:])
    assert args.arch == DOCS[doc]
    assert args.eval_bleu and args.eval_bleu_remove_bpe == "@@ " and args.eval_bleu_detok == "moses"
    assert eval(args.eval_bleu_args) == {"beam": 5, "max_len_a": 1.2, "max_len_b": 10}
    assert args.best_checkpoint_metric == "bleu" and args.maximize_best_checkpoint_metric
    assert args.share_decoder_input_output_embed  # tied like the one-layer models' embeddings
    # the embeddings are dumped from that checkpoint
    dump = [c for c in shell_commands((ROOT / "docs" / doc).read_text())
            if c[:3] == ["python", "-m", "one_layer_lottery.dump_embeddings"]]
    assert dump and dump[0][3] == f"{args.save_dir}/checkpoint_best.pt"
