"""Moses-compatible text preparation with pip tools, for scripts/prepare_*.sh.

The Perl tools of fairseq's recipes (tokenizer.perl, lowercase.perl, clean-corpus-n.perl,
normalize-punctuation.perl, remove-non-printing-char.perl) re-done with sacremoses and the
standard library. Input is split on '\\n' only (a U+2028 or a '\\r' stays inside its line, as
for Perl), read and written as UTF-8.

  text_prep.py tokenize --lang L [--no-escape] [--aggressive-dash-splits] [--lowercase]
                        [--normalize-punct] [--workers N]          < in > out
  text_prep.py lowercase                                           < in > out
  text_prep.py clean CORPUS L1 L2 OUT MIN MAX [--ratio R]
  text_prep.py detokenize --lang L                                 < in > out
  text_prep.py spm-train --model-prefix P --vocab-size N INPUT...  (joint BPE model P.model)
  text_prep.py spm-encode --model P.model                          < in > out
"""
import argparse
import io
import logging
import multiprocessing
import re
import sys

logger = logging.getLogger("text_prep")

# Perl's \s on character strings (Perl >= 5.18): what tokenizer.perl and clean-corpus-n.perl see.
PERL_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_SPACES = re.compile(f"[{PERL_SPACE}]+")
_ONLY_SPACES = re.compile(f"[{PERL_SPACE}]*")


def perl_lc(text: str) -> str:
    """Perl's lc: Unicode full lowercase mapping without the context-dependent final sigma
    (Python's str.lower writes a final capital sigma as 'ς', Perl always as 'σ')."""
    return text.replace("\u03a3", "\u03c3").lower()


def read_lines(stream):
    """Lines of a binary stream without their '\\n' (only '\\n' ends a line)."""
    text = io.TextIOWrapper(stream, encoding="utf-8", newline="\n")
    for line in text:
        yield line[:-1] if line.endswith("\n") else line


class Tokenizer:
    """tokenizer.perl [-a] [-no-escape] -l LANG, optionally after normalize-punctuation.perl and
    remove-non-printing-char.perl, optionally followed by lowercase.perl."""

    def __init__(self, lang, escape=True, aggressive_dash_splits=False, lowercase=False, normalize_punct=False):
        from sacremoses import MosesPunctNormalizer, MosesTokenizer

        self.tokenizer = MosesTokenizer(lang=lang)
        self.normalizer = MosesPunctNormalizer(lang=lang, perl_parity=True) if normalize_punct else None
        self.escape = escape
        self.aggressive = aggressive_dash_splits
        self.lowercase = lowercase
        if normalize_punct:
            import regex  # fairseq's dependency; the stdlib re has no \p{C}

            self.non_printing = regex.compile(r"\p{C}")

    def __call__(self, line: str) -> str:
        if self.normalizer is not None:
            line = self.non_printing.sub(" ", self.normalizer.normalize(line))
        if _ONLY_SPACES.fullmatch(line):
            out = line  # tokenizer.perl copies blank lines unchanged
        else:
            out = self.tokenizer.tokenize(line, aggressive_dash_splits=self.aggressive, return_str=True,
                                          escape=self.escape)
        return perl_lc(out) if self.lowercase else out


_worker_tokenizer = None


def _init_worker(kwargs):
    global _worker_tokenizer
    _worker_tokenizer = Tokenizer(**kwargs)


def _tokenize_chunk(lines):
    return [_worker_tokenizer(line) for line in lines]


def _chunks(lines, size):
    chunk = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def tokenize_stream(lines, out, workers=1, **kwargs):
    """Tokenise ``lines`` into ``out`` (one line each, in order); returns the number of lines."""
    n = 0
    if workers <= 1:
        tok = Tokenizer(**kwargs)
        for line in lines:
            out.write(tok(line) + "\n")
            n += 1
        return n
    with multiprocessing.get_context("fork").Pool(workers, _init_worker, (kwargs,)) as pool:
        for chunk in pool.imap(_tokenize_chunk, _chunks(lines, 2000), chunksize=1):
            out.write("".join(line + "\n" for line in chunk))
            n += len(chunk)
    return n


def _word_count(line: str) -> int:
    return len(line.split(" "))


def clean_corpus(corpus, l1, l2, out, min_len, max_len, ratio=9.0, max_word_length=1000, keep_bars=False):
    """clean-corpus-n.perl: drop pairs with an empty side, a side outside [min_len, max_len] words,
    a length ratio above ``ratio`` or a word longer than ``max_word_length`` characters.
    Whitespace runs become one space (Perl's \\s). Like the Perl script, '|' (a Moses factor
    separator) is removed unless the first pair has one; ``keep_bars`` keeps it (for unescaped text).
    Returns (pairs read, pairs written)."""
    long_word = re.compile(f"[^{PERL_SPACE}|]{{{max_word_length + 1}}}")
    n_in = n_out = 0
    factored = None
    with open(f"{corpus}.{l1}", "rb") as f1, open(f"{corpus}.{l2}", "rb") as f2, \
            open(f"{out}.{l1}", "w", encoding="utf-8", newline="\n") as o1, \
            open(f"{out}.{l2}", "w", encoding="utf-8", newline="\n") as o2:
        lines2 = read_lines(f2)
        for a in read_lines(f1):
            b = next(lines2, None)
            if b is None:
                raise SystemExit(f"clean: {corpus}.{l2} has fewer lines than {corpus}.{l1}")
            n_in += 1
            if factored is None:
                factored = keep_bars or "|" in a or "|" in b
            sides = []
            for s in (a, b):
                if not factored:
                    s = s.replace("|", "")
                sides.append(_SPACES.sub(" ", s).strip(" "))
            a, b = sides
            if not a or not b:
                continue
            na, nb = _word_count(a), _word_count(b)
            if not (min_len <= na <= max_len and min_len <= nb <= max_len):
                continue
            if na / nb > ratio or nb / na > ratio:
                continue
            if long_word.search(a) or long_word.search(b):
                continue
            o1.write(a + "\n")
            o2.write(b + "\n")
            n_out += 1
        if next(lines2, None) is not None:
            raise SystemExit(f"clean: {corpus}.{l2} has more lines than {corpus}.{l1}")
    return n_in, n_out


def spm_train(inputs, model_prefix, vocab_size, input_sentence_size=0, num_threads=None):
    """A BPE sentencepiece model on ``inputs`` (one joint model for all of them) without
    bos / eos / pad pieces (fairseq's dictionary adds its own) and unk id 0."""
    import sentencepiece as spm

    options = dict(input=",".join(inputs), model_prefix=model_prefix, vocab_size=vocab_size, model_type="bpe",
                   character_coverage=1.0, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, minloglevel=1)
    if input_sentence_size:
        # Sample that many sentences (the full WMT14 training text is too large to hold in memory).
        options.update(input_sentence_size=input_sentence_size, shuffle_input_sentence=True)
    if num_threads:
        options["num_threads"] = num_threads
    spm.SentencePieceTrainer.train(**options)


def spm_encode(lines, out, model):
    """Each line as space-separated sentencepiece pieces."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=model)
    for chunk in _chunks(lines, 10000):
        out.write("".join(" ".join(pieces) + "\n" for pieces in sp.encode(chunk, out_type=str)))


def main(argv=None):
    logging.basicConfig(format="%(name)s: %(message)s", level=logging.INFO, stream=sys.stderr)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokenize", help="tokenizer.perl (stdin -> stdout)")
    t.add_argument("--lang", required=True)
    t.add_argument("--no-escape", action="store_true", help="do not escape & | < > ' \" [ ] (tokenizer.perl -no-escape)")
    t.add_argument("--aggressive-dash-splits", action="store_true", help="tokenizer.perl -a")
    t.add_argument("--lowercase", action="store_true", help="then lowercase.perl")
    t.add_argument("--normalize-punct", action="store_true",
                   help="first normalize-punctuation.perl and remove-non-printing-char.perl")
    t.add_argument("--workers", type=int, default=1)
    sub.add_parser("lowercase", help="lowercase.perl (stdin -> stdout)")
    c = sub.add_parser("clean", help="clean-corpus-n.perl")
    for name in ("corpus", "l1", "l2", "out"):
        c.add_argument(name)
    c.add_argument("min_len", type=int)
    c.add_argument("max_len", type=int)
    c.add_argument("--ratio", type=float, default=9.0)
    c.add_argument("--keep-bars", action="store_true", help="do not remove '|' (the Perl script does)")
    st = sub.add_parser("spm-train", help="joint sentencepiece BPE model")
    st.add_argument("inputs", nargs="+")
    st.add_argument("--model-prefix", required=True)
    st.add_argument("--vocab-size", type=int, required=True)
    st.add_argument("--input-sentence-size", type=int, default=0, help="sample this many sentences (0: all)")
    st.add_argument("--num-threads", type=int, default=None)
    se = sub.add_parser("spm-encode", help="sentencepiece pieces (stdin -> stdout)")
    se.add_argument("--model", required=True)
    d = sub.add_parser("detokenize", help="sacremoses detokenizer with unescaping (stdin -> stdout)")
    d.add_argument("--lang", required=True)
    args = parser.parse_args(argv)

    out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="\n")
    lines = read_lines(sys.stdin.buffer)
    if args.cmd == "tokenize":
        tokenize_stream(lines, out, workers=args.workers, lang=args.lang, escape=not args.no_escape,
                        aggressive_dash_splits=args.aggressive_dash_splits, lowercase=args.lowercase,
                        normalize_punct=args.normalize_punct)
    elif args.cmd == "lowercase":
        for line in lines:
            out.write(perl_lc(line) + "\n")
    elif args.cmd == "detokenize":
        from sacremoses import MosesDetokenizer

        detok = MosesDetokenizer(lang=args.lang)
        for line in lines:
            out.write(detok.detokenize(line.split(), unescape=True) + "\n")
    elif args.cmd == "spm-train":
        spm_train(args.inputs, args.model_prefix, args.vocab_size, args.input_sentence_size, args.num_threads)
    elif args.cmd == "spm-encode":
        spm_encode(lines, out, args.model)
    elif args.cmd == "clean":
        n_in, n_out = clean_corpus(args.corpus, args.l1, args.l2, args.out, args.min_len, args.max_len, args.ratio,
                                    keep_bars=args.keep_bars)
        logger.info(f"{args.corpus}.{{{args.l1},{args.l2}}}: {n_in} pairs read, {n_out} kept "
                    f"(length {args.min_len}-{args.max_len}, ratio {args.ratio})")
    out.flush()


if __name__ == "__main__":
    main()
