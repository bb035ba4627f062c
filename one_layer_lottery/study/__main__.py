"""Command line of the study runner (see the package docstring)."""
import argparse
import sys

from ..atomic import write_text
from ..console import quiet_logging, tool_errors
from . import __doc__ as USAGE
from .spec import load


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m one_layer_lottery.study", description=USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train and score every run that has no result file yet")
    run.add_argument("study")
    run.add_argument("only", nargs="*", metavar="RUN_OR_EXPERIMENT",
                     help="run these (in this order) instead of all, e.g. dense-s1 or small")
    run.add_argument("--commit", action="store_true", help="git-commit each result file as soon as it is written")
    table = sub.add_parser("table", help="Markdown table of the result files")
    table.add_argument("study")
    table.add_argument("--out", help="also write the table to this file")
    table.add_argument("--into", metavar="DOC.md", help="also put the table between the markers of this "
                       "Markdown file named after the study file: <!-- study table: NAME --> and "
                       "<!-- /study table: NAME --> for NAME.yaml")
    plot = sub.add_parser("plot", help="figure of the result files")
    plot.add_argument("study")
    plot.add_argument("out_png")
    args = parser.parse_args(argv)
    quiet_logging()
    with tool_errors("study"):
        study = load(args.study)
        if args.command == "run":
            from .runner import run_study

            return 1 if run_study(study, study.select(args.only), commit=args.commit) else 0
        from . import report

        rows = report.collect(study)
        if args.command == "table":
            text = report.markdown(study, rows)
            print(text, end="")
            if args.out:
                write_text(args.out, text, inputs=[args.study])
            if args.into:
                report.fill_between_markers(args.into, text, study)
        else:
            report.plot(study, rows, args.out_png, inputs=[args.study])
            print(f"study: figure written to {args.out_png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
