"""Translate German lines into English with a pretrained subnetwork (default: the one in data/pretrained).

    python -m one_layer_lottery.translate [--model DIR] [FILE] [--beam 5] [--batch-size 64]
    echo "Ein Mann fährt Fahrrad." | python -m one_layer_lottery.translate

Reads FILE (standard input without it) and writes one English line per line, in order; an empty
line stays empty. Lines are translated in batches; a progress bar goes to stderr when it is a
terminal and there is more than one batch. A line longer than the model takes is translated up to
its limit, with a warning.
"""
import argparse
import sys
from typing import Iterator, List

from tqdm import tqdm

from .console import ToolError, quiet_logging, read_text, tool_errors
from .pretrained import DEFAULT_DIR, load


def read_lines(path: str) -> List[str]:
    """The lines of ``path`` (standard input for None or "-"), without their line ends."""
    if path in (None, "-"):
        try:
            text = sys.stdin.read()
        except UnicodeDecodeError:
            raise ToolError("standard input: not UTF-8 text") from None
    else:
        text = read_text(path, "German text")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def translations(model, lines: List[str], beam: int, batch_size: int, progress=None) -> Iterator[List[str]]:
    """The English of ``lines``, one list per batch of ``batch_size`` lines; a blank line gives ''."""
    for start in range(0, len(lines), batch_size):
        batch = lines[start:start + batch_size]
        text = [i for i, line in enumerate(batch) if line.strip()]
        english = model.translate([batch[i] for i in text], beam=beam) if text else []
        out = [""] * len(batch)
        for i, sentence in zip(text, english):
            out[i] = sentence
        if progress is not None:
            progress.update(len(batch))
        yield out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m one_layer_lottery.translate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", nargs="?", help="German text, one sentence per line (default: standard input)")
    parser.add_argument("--model", default=DEFAULT_DIR, help="a pretrained directory (default: data/pretrained)")
    parser.add_argument("--beam", type=int, default=5, help="beam size (default 5)")
    parser.add_argument("--batch-size", type=int, default=64, help="lines translated together (default 64)")
    args = parser.parse_args(argv)
    if args.beam < 1 or args.batch_size < 1:
        parser.error("--beam and --batch-size must be at least 1")
    quiet_logging()
    with tool_errors("translate"):
        lines = read_lines(args.file)
        model = load(args.model)
        model.cfg.dataset.batch_size = args.batch_size
        show = sys.stderr.isatty() and len(lines) > args.batch_size
        with tqdm(total=len(lines), unit="line", file=sys.stderr, disable=not show) as progress:
            for batch in translations(model, lines, args.beam, args.batch_size, progress):
                sys.stdout.write("".join(line + "\n" for line in batch))
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
