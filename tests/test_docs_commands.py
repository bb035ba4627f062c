"""The command blocks of README.md and docs/*.md. Those a CPU runs in seconds to minutes on the sample
corpus run as written, in a folder where their relative paths lead (the checkout's inputs linked in,
their outputs written there); the others are parsed or checked against the test that runs them."""
import os
import re
import shlex
import subprocess

import pytest

from conftest import BIN, ROOT, hypotheses, served_tools

DOCS = {"wmt14.md": "transformer_wmt_en_de", "iwslt14.md": "transformer_iwslt_de_en"}
README = ROOT / "README.md"
# What the documented commands read from the checkout; everything else they name they write.
INPUTS = ("data", "configs", "scripts", "one_layer_lottery", ".venv")


def command_blocks(markdown):
    """The ```bash blocks, each as the text of its commands (continuation lines joined, blank and
    comment lines dropped)."""
    blocks = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        lines = re.sub(r"\\\n\s*", " ", block).split("\n")
        blocks.append([line.strip() for line in lines if shlex.split(line, comments=True)])
    return blocks


def shell_commands(markdown):
    """The commands of the ```bash blocks as words (comments dropped)."""
    return [shlex.split(command, comments=True) for block in command_blocks(markdown) for command in block]


def programs(command):
    """What each part of ``command`` runs (parts joined by |, && or ;): ``fairseq-train``,
    ``python -m one_layer_lottery.export``, ``bash scripts/demo.sh``, ..."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    parts, words = [], []
    for token in [*lexer, ";"]:
        if token in ("|", "||", "&&", ";"):
            parts.append(words)
            words = []
        else:
            words.append(token)
    return [" ".join(w[:3]) if w[:2] == ["python", "-m"] else " ".join(w[:2]) if w[0] == "bash" else w[0]
            for w in parts if w]


def program(command):
    return programs(command)[0]


def block_of(markdown, name):
    """The one command block with a command that runs ``name`` (see ``programs``)."""
    found = [b for b in command_blocks(markdown) if any(name in programs(c) for c in b)]
    assert len(found) == 1, (name, found)
    return found[0]


def run_as_written(command, cwd):
    """``command`` as a user types it in ``cwd`` (bash: quotes and $PWD as written), in the project's
    environment; returns the CompletedProcess after checking it succeeded. Its fairseq and plugin
    commands are served (conftest.served_tools)."""
    env = served_tools(dict(os.environ, PYTHONWARNINGS="ignore", PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}"))
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def readme_dir(tmp_path_factory):
    """Where the README's commands run: the project root's inputs, and room for their outputs."""
    folder = tmp_path_factory.mktemp("readme")
    for name in INPUTS:
        (folder / name).symlink_to(ROOT / name)
    return folder


@pytest.fixture(scope="module")
def readme_training(readme_dir):
    """The README's fairseq-preprocess and fairseq-train commands, run as written: {program: process}.
    Its checkpoint is the one every decoding command of the README and docs reads."""
    block = block_of(README.read_text(), "fairseq-preprocess")
    runs = {}
    for command in block:
        if program(command) not in ("source", "fairseq-generate"):
            runs[program(command)] = run_as_written(command, readme_dir)
    assert set(runs) == {"fairseq-preprocess", "fairseq-train"}
    return runs


def test_readme_training_stops_and_logs_the_mask_summary(readme_training, readme_dir):
    """It stops by itself, and its log carries what the README says: at 20 updates, before the second
    computation of the mask statistics (--mask-log-interval 100), the summary without mask_flipped."""
    log = readme_training["fairseq-train"].stdout + readme_training["fairseq-train"].stderr
    assert "done training" in log and (readme_dir / "checkpoints" / "checkpoint_best.pt").is_file()
    epochs = [line for line in log.splitlines() if "| train |" in line]  # one line per epoch
    assert epochs and "| num_updates 20 |" in epochs[-1], epochs
    for line in epochs:
        for summary in ("mask_kept 0.5 |", "mask_jaccard_encoder ", "mask_jaccard_decoder "):
            assert summary in line, line
        assert "mask_flipped" not in line


def test_readme_decoding_scores_every_test_sentence(readme_training, readme_dir):
    generate = [c for c in block_of(README.read_text(), "fairseq-preprocess") if program(c) == "fairseq-generate"]
    assert len(generate) == 1
    out = run_as_written(generate[0], readme_dir).stdout
    sentences = len((ROOT / "data" / "sample" / "test.en").read_text().splitlines())
    assert sorted(hypotheses(out)) == list(range(sentences))
    assert re.search(r"^Generate test with beam=5: BLEU4 = ", out, flags=re.M)


def test_readme_hydra_example_trains_from_the_project_root(readme_training, readme_dir):
    """configs/sample.yaml as the README runs it (after its fairseq-preprocess): Hydra runs the job in
    outputs/<date>/<time>/, so the example's paths are absolute."""
    from one_layer_lottery.fairseq_checkpoint import updates_done
    from one_layer_lottery.model_files import load_checkpoint_state

    block = block_of(README.read_text(), "fairseq-hydra-train")
    assert len(block) == 1
    run_as_written(block[0], readme_dir)
    saved = list((readme_dir / "outputs").glob("*/*/checkpoints/checkpoint_last.pt"))
    assert len(saved) == 1, saved
    assert updates_done(load_checkpoint_state(saved[0])) == 20


def test_readme_subnetwork_tools_run_on_the_trained_checkpoint(readme_training, readme_dir):
    block = block_of(README.read_text(), "python -m one_layer_lottery.export")
    for command in block:
        run_as_written(command, readme_dir)
    assert (readme_dir / "model.olls").stat().st_size > 0 and (readme_dir / "dense.pt").stat().st_size > 0
    assert (readme_dir / "figures" / "mask_stats.json").is_file()


def test_subnetwork_files_page_first_block_runs(readme_training, readme_dir, tmp_path):
    """docs/subnetwork-files.md's commands, on the README's checkpoint and binarized corpus."""
    for name in ("checkpoints", "data-bin"):
        (tmp_path / name).symlink_to(readme_dir / name)
    block = command_blocks((ROOT / "docs" / "subnetwork-files.md").read_text())[0]
    for command in block:
        run_as_written(command, tmp_path)
    for output in ("model.olls", "rebuilt.pt", "dense.pt", "figures/mask_stats.json"):
        assert (tmp_path / output).is_file(), output


# The README's blocks that do not run here, and why: what a test checks instead.
README_NOT_RUN = {
    "bash scripts/demo.sh": "trains configs/sample.yaml for 600 updates (minutes): the Hydra example runs that "
                            "config, and the README's fairseq-generate its decoding; test.sh runs this suite",
    "bash scripts/prepare_iwslt14.sh": "the IWSLT14 corpus and a GPU: tests/test_data_scripts.py and "
                                       "tests/test_train_scripts.py run these scripts on small inputs",
}
# The README's blocks that run, by a program they run; test_pretrained.py runs the translation block.
README_RUN = ("fairseq-preprocess", "fairseq-hydra-train", "python -m one_layer_lottery.export",
              "python -m one_layer_lottery.translate")


def test_every_readme_block_runs_or_is_checked():
    """Each README block is run by a test, or its scripts exist and parse (bash -n), for the reason
    README_NOT_RUN gives."""
    for block in command_blocks(README.read_text()):
        run = {p for c in block for p in programs(c)}
        assert run & {*README_RUN, *README_NOT_RUN}, f"README block {block} is neither run nor checked"
        if run & set(README_NOT_RUN):
            for command in block:
                for words in (shlex.split(part, comments=True) for part in command.split("&&")):
                    script = ROOT / words[1]
                    assert words[0] == "bash" and script.is_file(), command
                    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script


# docs page -> the test that runs its first command block on small inputs, when the page's own inputs
# are the full corpora or several GPUs (subnetwork-files.md and tools.md run here, the study pages'
# blocks are parsed here).
RUN_ELSEWHERE = {
    "benchmarks.md": ("test_data_scripts.py", "test_prepare_multi30k_on_the_sample_corpus", "prepare_multi30k.sh"),
    "iwslt14.md": ("test_data_scripts.py", "test_prepare_iwslt14_from_a_local_archive", "prepare_iwslt14.sh"),
    "wmt14.md": ("test_data_scripts.py", "test_prepare_wmt14_from_local_archives", "prepare_wmt14_en_de.sh"),
    "trustworthy-runs.md": ("test_distributed.py", "test_two_workers_agree_with_each_other_and_with_one_process",
                            "torchrun"),
}


def test_every_docs_first_command_block_runs_somewhere():
    pages = {p.name for p in (ROOT / "docs").glob("*.md") if command_blocks(p.read_text())}
    assert pages == {*RUN_ELSEWHERE, *STUDY_PAGES, "subnetwork-files.md", "tools.md"}
    for page, (test_file, test_name, tool) in RUN_ELSEWHERE.items():
        first = command_blocks((ROOT / "docs" / page).read_text())[0]
        assert any(tool in command for command in first), (page, first)
        assert f"\ndef {test_name}(" in (ROOT / "tests" / test_file).read_text(), (page, test_name)


STUDY_PAGES = ("reproduction.md", "beyond-the-paper.md")


@pytest.mark.parametrize("page", STUDY_PAGES)
def test_study_page_first_block_parses(page):
    """Its runs train on Multi30k (hours): the study files load and the runs they name exist."""
    from one_layer_lottery.study.spec import load

    for words in (shlex.split(c, comments=True) for c in command_blocks((ROOT / "docs" / page).read_text())[0]):
        assert words[:3] == ["python", "-m", "one_layer_lottery.study"], words
        spec = load(str(ROOT / words[4]))
        if words[3] == "run":
            assert spec.select(words[5:]), words


def test_tools_page_first_block_averages_the_readme_checkpoints(readme_training, readme_dir):
    """Its first command, A.pt and B.pt being the README run's two checkpoints (the others average a
    save directory's epoch or update checkpoints, which a 20-update run does not write)."""
    command = command_blocks((ROOT / "docs" / "tools.md").read_text())[0][0]
    assert " A.pt B.pt " in command
    command = command.replace(" A.pt B.pt ", " checkpoints/checkpoint_best.pt checkpoints/checkpoint_last.pt ")
    run_as_written(command, readme_dir)
    assert (readme_dir / "avg.pt").stat().st_size > 0


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_dense_baseline_selects_its_checkpoint_by_validation_bleu(doc):
    """The dense-baseline commands of docs/wmt14.md and docs/iwslt14.md (full corpora, GPUs), parsed by
    fairseq-train's own parser: their checkpoint_best.pt is chosen by validation BLEU, not by loss."""
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
