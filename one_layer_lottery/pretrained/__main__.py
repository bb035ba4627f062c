"""python -m one_layer_lottery.pretrained build | check (see __init__.py)."""
import argparse
import sys

from ..console import quiet_logging, tool_errors
from . import __doc__ as usage
from .build import build, check
from .hub import DEFAULT_DIR


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m one_layer_lottery.pretrained", description=usage,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="write a pretrained directory from a study result file")
    p.add_argument("result", help="the run's result file (results/<study>/<run>.json)")
    p.add_argument("out", nargs="?", default=DEFAULT_DIR, help="the directory to write (default: data/pretrained)")
    p.add_argument("--checkpoint", help="default: checkpoint_best.pt in the run's --save-dir")
    p.add_argument("--data", help="default: the data directory of the run's training command")
    p = sub.add_parser("check", help="decode the test set with a pretrained directory; compare with its BLEU")
    p.add_argument("dir", nargs="?", default=DEFAULT_DIR, help="default: data/pretrained")
    args = parser.parse_args(argv)
    quiet_logging()
    with tool_errors("pretrained"):
        if args.command == "build":
            provenance = build(args.result, args.out, args.checkpoint, args.data)
            total = sum(entry["bytes"] for entry in provenance["files"].values())
            print(f"wrote {args.out}: {total} bytes of model files; recorded test BLEU "
                  f"{provenance['test']['bleu_tokenised']} ({provenance['result_file']})")
            return 0
        found = check(args.dir)
        same = found["bleu"] == found["recorded"]
        print(f"test BLEU {found['bleu']} over {len(found['hypotheses'])} sentences; recorded {found['recorded']}: "
              f"{'the same' if same else 'DIFFERENT'}")
        return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
