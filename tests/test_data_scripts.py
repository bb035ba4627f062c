"""scripts/prepare_{iwslt14,wmt14_en_de,multi30k}.sh end to end on archives / folders built from the
project's sample corpus with the real file layout, plus checks against ../shared's real IWSLT14 and
Multi30k files (skipped when ../shared is absent)."""
import io
import sys
import tarfile
import time
from pathlib import Path

import pytest

from conftest import ROOT, SHARED, run_script

SAMPLE = ROOT / "data" / "sample"
SCRIPTS = ROOT / "scripts"
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: the connection is refused at once

sys.path.insert(0, str(SCRIPTS))
import text_prep  # noqa: E402


def lines(path):
    return Path(path).read_text(encoding="utf-8").split("\n")[:-1]


def sample(split, lang):
    return lines(SAMPLE / f"{split}.{lang}")


def capitalize(line):
    return line[:1].upper() + line[1:]


def add_bytes(tar, name, text):
    data = text.encode("utf-8")
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def all_files(folder):
    return {p: p.stat().st_mtime_ns for p in Path(folder).rglob("*") if p.is_file()}


def indexed_lengths(prefix):
    from fairseq.data import data_utils

    dataset = data_utils.load_indexed_dataset(str(prefix), None)
    return [len(dataset[i]) for i in range(len(dataset))]


# -- IWSLT14 ---------------------------------------------------------------------------------------

IWSLT_TEST_SETS = ["IWSLT14.TED.dev2010", "IWSLT14.TEDX.dev2012", "IWSLT14.TED.tst2010", "IWSLT14.TED.tst2011",
                   "IWSLT14.TED.tst2012"]
# (German, English, expected German, expected English): hand-made training pairs for the
# escaping / metadata rules of the recipe; None: the pair is removed by the cleaning.
IWSLT_SPECIAL = [
    ("<speaker>Jane Doe</speaker>", "<speaker>Jane Doe</speaker>",
     "&lt; speaker &gt; jane doe &lt; / speaker &gt;", "&lt; speaker &gt; jane doe &lt; / speaker &gt;"),
    ('Es ist ein "Test" & [mehr] | weniger.', "It's a \"test\" & [more] | less.",
     "es ist ein &quot; test &quot; &amp; &#91; mehr &#93; &#124; weniger .",
     "it &apos;s a &quot; test &quot; &amp; &#91; more &#93; &#124; less ."),
    ("Ja.", "Yes, of course, certainly, absolutely.", None, None),  # length ratio 2 / 8 > 1.5
    (" ".join(["Wort"] * 176), " ".join(["word"] * 176), None, None),  # longer than 175 tokens
    ("   ", "   ", None, None),  # empty
]


def build_iwslt_archive(path, drop=()):
    """A de-en.tgz with the layout of the real IWSLT14 release, made from data/sample."""
    train = {"de": [], "en": []}
    expected = {"de": [], "en": []}
    pairs = list(zip(sample("train", "de"), sample("train", "en")))
    talks = [pairs[i:i + 500] for i in range(0, len(pairs), 500)]
    for t, talk in enumerate(talks):
        for lang, title in (("de", f"Vortrag {t}"), ("en", f"Talk {t}")):
            train[lang] += [f"<url>http://www.ted.com/talks/talk_{t}.html</url>",
                            f"<keywords>talks, {lang}, {t}</keywords>",
                            f"<talkid>{t}</talkid>",
                            f"<title>{title}</title>",
                            f"<description>{title} ?</description>"]
            expected[lang] += [title.lower(), f"{title.lower()} ?"]
        for de, en in talk:
            train["de"].append(capitalize(de))
            train["en"].append(capitalize(en))
            expected["de"].append(de)
            expected["en"].append(en)
        if t < len(IWSLT_SPECIAL):
            de, en, exp_de, exp_en = IWSLT_SPECIAL[t]
            train["de"].append(de)
            train["en"].append(en)
            if exp_de is not None:
                expected["de"].append(exp_de)
                expected["en"].append(exp_en)

    test_pairs = list(zip(sample("test", "de"), sample("test", "en")))
    test_expected = {}
    with tarfile.open(path, "w:gz") as tar:
        add_bytes(tar, "de-en/README", "fake IWSLT14 release made from data/sample\n")
        add_bytes(tar, "de-en/train.en", "\n".join(sample("train", "en")) + "\n")
        for lang in ("de", "en"):
            if f"train.tags.de-en.{lang}" not in drop:
                add_bytes(tar, f"de-en/train.tags.de-en.{lang}", "\n".join(train[lang]) + "\n")
        for k, name in enumerate(IWSLT_TEST_SETS):
            chunk = test_pairs[60 * k:60 * (k + 1)]
            for j, lang in enumerate(("de", "en")):
                segs = [capitalize(pair[j]) for pair in chunk]
                if k == 1 and lang == "en":
                    segs[0] = "It’s fine."  # the recipe turns ’ into '
                body = "\n".join(f'<seg id="{i + 1}"> {s} </seg>' for i, s in enumerate(segs))
                xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<mteval>\n<srcset setid="{name}" srclang="german">\n'
                       f'<doc docid="{k}" genre="lectures">\n<url>http://www.ted.com/talks/x.html</url>\n'
                       f"<talkid>{k}</talkid>\n<title>Some title</title>\n{body}\n</doc>\n</srcset>\n</mteval>\n")
                member = f"{name}.de-en.{lang}.xml"
                if member not in drop:
                    add_bytes(tar, f"de-en/{member}", xml)
                exp = [pair[j] for pair in chunk]
                if k == 1 and lang == "en":
                    exp[0] = "it &apos;s fine ."
                test_expected[(name, lang)] = exp
    return expected, test_expected


@pytest.mark.slow
def test_prepare_iwslt14_from_a_local_archive(tmp_path):
    archive = tmp_path / "de-en.tgz"
    expected, test_expected = build_iwslt_archive(archive)
    work, dest = tmp_path / "work", tmp_path / "data-bin"
    env = {"WORK_DIR": str(work), "DEST": str(dest), "IWSLT14_URL": f"{UNREACHABLE}/de-en.tgz"}
    run_script("prepare_iwslt14.sh", archive, env=env)
    prep = work / "iwslt14.tokenized.de-en"
    tmp = prep / "tmp"

    # tokenised, cleaned, lowercased training stream; valid = every 23rd line, train = the rest
    for lang in ("de", "en"):
        stream = lines(tmp / f"train.tags.de-en.{lang}")
        assert stream == expected[lang], lang
        assert lines(tmp / f"valid.{lang}") == stream[22::23]
        assert lines(tmp / f"train.{lang}") == [x for i, x in enumerate(stream, 1) if i % 23]
        # test = the five sets in the recipe's order
        assert lines(tmp / f"test.{lang}") == [x for name in IWSLT_TEST_SETS for x in test_expected[(name, lang)]]
        for name in IWSLT_TEST_SETS:
            assert lines(tmp / f"{name}.de-en.{lang}") == test_expected[(name, lang)]

    # BPE: joint codes; the BPE'd files are the tokenised ones with the codes applied
    from subword_nmt.apply_bpe import BPE

    code = prep / "code"
    assert lines(code)[0] == "#version: 0.2" and len(lines(code)) > 100
    with open(code, encoding="utf-8") as f:
        bpe = BPE(f)
    for split in ("train", "valid", "test"):
        for lang in ("de", "en"):
            bpe_lines = lines(prep / f"{split}.{lang}")
            tok_lines = lines(tmp / f"{split}.{lang}")
            assert bpe_lines == [bpe.process_line(x) for x in tok_lines]
            assert [x.replace("@@ ", "") for x in bpe_lines] == tok_lines
    assert any("@@ " in x for x in lines(prep / "train.de"))

    # binarized: separate dictionaries by default, every sentence present
    assert (dest / "dict.de.txt").read_text() != (dest / "dict.en.txt").read_text()
    for split in ("train", "valid", "test"):
        for lang in ("de", "en"):
            lengths = indexed_lengths(dest / f"{split}.de-en.{lang}")
            assert lengths == [len(x.split()) + 1 for x in lines(prep / f"{split}.{lang}")]  # + </s>

    # a re-run skips every step and rewrites nothing
    before = all_files(tmp_path)
    proc = run_script("prepare_iwslt14.sh", archive, env=env)
    assert proc.stderr.count("skip:") == 4, proc.stderr
    assert all_files(tmp_path) == before

    # the joined dictionary on demand, reusing the prepared text
    joined = tmp_path / "data-bin-joined"
    proc = run_script("prepare_iwslt14.sh", archive, env=dict(env, DEST=str(joined), JOINED_DICTIONARY="1"))
    assert proc.stderr.count("skip:") == 3
    assert (joined / "dict.de.txt").read_text() == (joined / "dict.en.txt").read_text()
    assert not list(tmp_path.rglob("*.tmp.*")), "temporary folders left behind"


def test_prepare_iwslt14_without_network_fails_fast_and_writes_nothing(tmp_path):
    work, dest = tmp_path / "work", tmp_path / "data-bin"
    env = {"WORK_DIR": str(work), "DEST": str(dest), "IWSLT14_URL": f"{UNREACHABLE}/de-en.tgz"}
    start = time.monotonic()
    proc = run_script("prepare_iwslt14.sh", env=env, check=False)
    assert proc.returncode != 0
    assert time.monotonic() - start < 60
    assert f"{UNREACHABLE}/de-en.tgz" in proc.stderr
    assert str(work / "orig" / "de-en.tgz") in proc.stderr  # where to put it
    assert "pass its path" in proc.stderr
    assert not work.exists() and not dest.exists()


def test_prepare_iwslt14_names_what_an_archive_lacks(tmp_path):
    archive = tmp_path / "de-en.tgz"
    build_iwslt_archive(archive, drop=("train.tags.de-en.en", "IWSLT14.TED.tst2011.de-en.de.xml"))
    work = tmp_path / "work"
    proc = run_script("prepare_iwslt14.sh", archive, env={"WORK_DIR": str(work), "DEST": str(tmp_path / "bin")},
                      check=False)
    assert proc.returncode != 0
    assert "de-en/train.tags.de-en.en" in proc.stderr and "IWSLT14.TED.tst2011.de-en.de.xml" in proc.stderr
    assert not (work / "orig" / "de-en").exists()
    assert not list(tmp_path.rglob("*.tmp.*"))


IWSLT_SHARED = SHARED / "iwslt14.tokenized.de-en"


@pytest.mark.skipif(not IWSLT_SHARED.is_dir(), reason="../shared/data/iwslt14.tokenized.de-en is absent")
def test_iwslt14_bpe_and_test_set_steps_reproduce_the_standard_files(tmp_path):
    """Our BPE step turns the standard tokenised valid/test files into the standard BPE'd ones, byte
    for byte, and our test-set step concatenates the five standard sets into tmp/test.*."""
    for split in ("valid", "test"):
        for lang in ("de", "en"):
            out = tmp_path / f"{split}.{lang}"
            run_script("prepare_iwslt14.sh", "apply-bpe", IWSLT_SHARED / "code", IWSLT_SHARED / "tmp" / f"{split}.{lang}",
                       out)
            assert out.read_bytes() == (IWSLT_SHARED / f"{split}.{lang}").read_bytes(), f"{split}.{lang}"
    for lang in ("de", "en"):
        out = tmp_path / f"test-set.{lang}"
        run_script("prepare_iwslt14.sh", "test-set", lang, IWSLT_SHARED / "tmp", out)
        assert out.read_bytes() == (IWSLT_SHARED / "tmp" / f"test.{lang}").read_bytes()


@pytest.mark.skipif(not IWSLT_SHARED.is_dir(), reason="../shared/data/iwslt14.tokenized.de-en is absent")
def test_iwslt14_tokenised_files_are_fixed_points_of_lowercasing_and_cleaning(tmp_path):
    """The standard tmp/ files are what our lowercasing and cleaning leave unchanged: already
    lowercase (Perl's lc), single-spaced, and every valid pair passes the 1-175 / ratio 1.5 filter."""
    tmp = IWSLT_SHARED / "tmp"
    for path in sorted(tmp.iterdir()):
        text = path.read_text(encoding="utf-8")
        assert text_prep.perl_lc(text) == text, path.name
    n_in, n_out = text_prep.clean_corpus(str(tmp / "valid"), "de", "en", str(tmp_path / "valid"), 1, 175, 1.5)
    assert n_in == n_out == 7283
    for lang in ("de", "en"):
        assert (tmp_path / f"valid.{lang}").read_bytes() == (tmp / f"valid.{lang}").read_bytes()


# -- text_prep unit checks --------------------------------------------------------------------------

def test_clean_corpus_follows_clean_corpus_n(tmp_path):
    pairs = [
        ("a  b\tc ", " x y z"),          # kept, whitespace normalised
        ("a b c d", "x"),                 # ratio 4 > 1.5
        ("", "x"),                        # empty side
        ("a|b c", "x y"),                 # '|' removed (not factored: the first pair has none)
        ("w" * 1001, "x"),                # a word longer than 1000 characters
        (" ".join("a" * 6), " ".join("x" * 5)),  # 6 words: over the maximum 5
        ("a\u00a0b", "x\u2028y"),         # Perl's \s covers NBSP and U+2028 (still inside the line)
    ]
    for lang, side in (("de", 0), ("en", 1)):
        (tmp_path / f"c.{lang}").write_text("".join(p[side] + "\n" for p in pairs), encoding="utf-8")
    n_in, n_out = text_prep.clean_corpus(str(tmp_path / "c"), "de", "en", str(tmp_path / "o"), 1, 5, 1.5)
    assert (n_in, n_out) == (7, 3)
    assert lines(tmp_path / "o.de") == ["a b c", "ab c", "a b"]
    assert lines(tmp_path / "o.en") == ["x y z", "x y", "x y"]


def test_parallel_tokenisation_keeps_the_order():
    text = [capitalize(x) + " It's „so“ - isn't it?" for x in sample("train", "de")[:4500]]
    outs = []
    for workers in (1, 2):
        out = io.StringIO()
        assert text_prep.tokenize_stream(iter(text), out, workers=workers, lang="de", lowercase=True) == len(text)
        outs.append(out.getvalue())
    assert outs[0] == outs[1]
    # German: apostrophes split on both sides (the English rule keeps "&apos;s" together)
    assert outs[0].split("\n")[0] == sample("train", "de")[0] + " it &apos; s „ so “ - isn &apos; t it ?"


def test_perl_lowercasing():
    assert text_prep.perl_lc("ÄÖÜ ΟΔΟΣ İ") == "äöü οδοσ i̇"  # no final-sigma rule, as Perl's lc


# -- WMT14 ------------------------------------------------------------------------------------------

# newstest2014 pairs with what Moses' punctuation normalisation would change (the fairseq recipe does
# not normalise the test set), escaping and dashes; the second pair is one that cleaning would drop.
TEST_SPECIAL = [("He said: \u00abno\u00bb \u2013 it\u2019s 3-4 pm & [late].",
                 "Er sagte: \u00abnein\u00bb \u2013 es ist 3-4 Uhr & [sp\u00e4t]."),
                ("Yes.", "Ja, das ist wirklich ganz sicher so und nicht anders.")]


def newstest_sgm(kind, lang, segments):
    """A newstest2014 .sgm file (src or ref) as test-full.tgz has them."""
    segs = "\n".join(f'<seg id="{i + 1}">{s}</seg>' for i, s in enumerate(segments))
    return (f'<{kind}set setid="newstest2014" srclang="any">\n<doc sysid="ref" docid="1" genre="news" origlang="en">\n'
            f"<p>\n{segs}\n</p>\n</doc>\n</{kind}set>\n")


def build_wmt_archives(folder, drop=()):
    """The five statmt.org archives with their real layout, made from data/sample; returns the raw
    training text (europarl + commoncrawl + news commentary) and the raw test text, by language."""
    folder.mkdir()
    de, en = sample("train", "de"), sample("train", "en")
    special_en = ["A well-known \u201etest\u201c \u2013 isn't it?", "Yes.", " ".join(["word"] * 260),
                  "Zero\u200bwidth & [brackets] | bars."]
    special_de = ["Ein bekannter \u201eTest\u201c \u2013 nicht wahr?", "Ja, das ist wirklich ganz sicher so.",
                  " ".join(["Wort"] * 260), "Null\u200bbreite & [Klammern] | Striche."]
    corpora = {
        "training-parallel-europarl-v7.tgz": ("training/europarl-v7.de-en", 0, 1500),
        "training-parallel-commoncrawl.tgz": ("commoncrawl.de-en", 1500, 3000),
        "training-parallel-nc-v9.tgz": ("training/news-commentary-v9.de-en", 3000, 4000),
    }
    train = {"de": [], "en": []}
    for archive, (member, a, b) in corpora.items():
        part_de, part_en = [capitalize(x) for x in de[a:b]], [capitalize(x) for x in en[a:b]]
        if archive.endswith("commoncrawl.tgz"):
            part_de, part_en = part_de + special_de, part_en + special_en
        train["de"] += part_de
        train["en"] += part_en
        with tarfile.open(folder / archive, "w:gz") as tar:
            for lang, part in (("de", part_de), ("en", part_en)):
                if f"{member}.{lang}" not in drop:
                    add_bytes(tar, f"{member}.{lang}", "\n".join(part) + "\n")
            add_bytes(tar, f"{member.replace('de-en', 'fr-en')}.fr", "autre langue\n")  # other pairs are there too
    with tarfile.open(folder / "dev.tgz", "w:gz") as tar:
        for lang in ("de", "en"):
            add_bytes(tar, f"dev/newstest2013.{lang}", "\n".join(map(capitalize, sample("valid", lang))) + "\n")
            add_bytes(tar, f"dev/newstest2012.{lang}", "older\n")
    test_sgm = {"en": [en for en, _ in TEST_SPECIAL] + list(map(capitalize, sample("test", "en"))),
                "de": [de for _, de in TEST_SPECIAL] + list(map(capitalize, sample("test", "de")))}
    with tarfile.open(folder / "test-full.tgz", "w:gz") as tar:
        for kind, lang in (("src", "en"), ("ref", "de")):
            add_bytes(tar, f"test-full/newstest2014-deen-{kind}.{lang}.sgm", newstest_sgm(kind, lang, test_sgm[lang]))
    test = {lang: [x.replace("\u2019", "'") for x in segs] for lang, segs in test_sgm.items()}  # as the recipes read it
    return train, test


@pytest.mark.slow
def test_prepare_wmt14_from_local_archives(tmp_path):
    import sentencepiece as spm

    archives = tmp_path / "archives"
    train, test = build_wmt_archives(archives)
    work, dest = tmp_path / "work", tmp_path / "data-bin"
    env = {"RECIPE": "spm", "WORK_DIR": str(work), "DEST": str(dest), "SPM_VOCAB": "300", "STATMT_URL": UNREACHABLE}
    run_script("prepare_wmt14_en_de.sh", archives, env=env)

    for lang in ("de", "en"):
        assert lines(work / "raw" / f"train.{lang}") == train[lang]  # europarl + commoncrawl + nc, in order
        assert lines(work / "raw" / f"valid.{lang}") == list(map(capitalize, sample("valid", lang)))
        assert lines(work / "raw" / f"test.{lang}") == test[lang]
    tok_en = lines(work / "tok" / "train.en")
    # normalised punctuation, aggressive dash splitting, no escaping
    assert 'A well @-@ known " test " - isn \'t it ?' in tok_en
    sp = spm.SentencePieceProcessor(model_file=str(dest / "spm.model"))
    assert sp.get_piece_size() == 300

    # cleaning on pieces (1-250, ratio 1.5): the 2:9-word pair and the 260-word pair among the removed
    tok_de = lines(work / "tok" / "train.de")
    encoded = [(sp.encode(e, out_type=str), sp.encode(d, out_type=str)) for e, d in zip(tok_en, tok_de)]
    expected = [(" ".join(e), " ".join(d)) for e, d in encoded
                if 1 <= len(e) <= 250 and 1 <= len(d) <= 250 and len(e) / len(d) <= 1.5 and len(d) / len(e) <= 1.5]
    assert list(zip(lines(work / "spm" / "train.en"), lines(work / "spm" / "train.de"))) == expected
    kept = {sp.decode(x.split()) for x in lines(work / "spm" / "train.en")}
    assert "Yes ." not in kept and not any(x.startswith("word word") for x in kept)
    assert 'A well @-@ known " test " - isn \'t it ?' in kept
    for split in ("valid", "test"):
        for lang in ("de", "en"):
            pieces = lines(work / "spm" / f"{split}.{lang}")
            assert [sp.decode(x.split()) for x in pieces] == lines(work / "tok" / f"{split}.{lang}")
            assert indexed_lengths(dest / f"{split}.en-de.{lang}") == [len(x.split()) + 1 for x in pieces]
    assert (dest / "dict.en.txt").read_text() == (dest / "dict.de.txt").read_text()
    assert (dest / "test.sacrebleu").read_text() == "wmt14/full en-de\n"  # for scripts/evaluate.sh

    before = all_files(tmp_path)
    proc = run_script("prepare_wmt14_en_de.sh", archives, env=env)
    assert proc.stderr.count("skip:") == 5, proc.stderr
    assert all_files(tmp_path) == before
    assert not list(tmp_path.rglob("*.tmp.*"))


@pytest.mark.slow
def test_prepare_wmt14_fairseq_recipe_from_local_archives(tmp_path):
    """The default recipe, fairseq's prepare-wmt14en2de.sh --icml17: tokenised with escaping (training
    text normalised first, the test set not), valid = every 100th line, joint subword-nmt BPE learned
    on train.en + train.de, train and valid cleaned on BPE units, test whole, one dictionary."""
    from subword_nmt.apply_bpe import BPE
    from subword_nmt.learn_bpe import learn_bpe

    archives = tmp_path / "archives"
    train, test = build_wmt_archives(archives)
    (archives / "dev.tgz").unlink()  # not needed: the recipe takes its valid set from the training text
    work, dest = tmp_path / "work", tmp_path / "data-bin"
    env = {"WORK_DIR": str(work), "DEST": str(dest), "BPE_TOKENS": "300", "STATMT_URL": UNREACHABLE}
    run_script("prepare_wmt14_en_de.sh", archives, env=env)
    fq = work / "fairseq"
    tmp = fq / "tmp"

    for lang in ("en", "de"):
        tokenize = text_prep.Tokenizer(lang, aggressive_dash_splits=True, normalize_punct=True)
        stream = [tokenize(x) for x in train[lang]]  # europarl + commoncrawl + news commentary, in order
        assert lines(tmp / f"train.tags.en-de.tok.{lang}") == stream
        assert lines(tmp / f"valid.{lang}") == stream[99::100]
        assert lines(tmp / f"train.{lang}") == [x for i, x in enumerate(stream, 1) if i % 100]
        tokenize_test = text_prep.Tokenizer(lang, aggressive_dash_splits=True)
        assert lines(tmp / f"test.{lang}") == [tokenize_test(x) for x in test[lang]]
    stream_en = lines(tmp / "train.tags.en-de.tok.en")
    # escaped and normalised (quotes, dash, the zero-width space) in training ...
    assert "A well @-@ known &quot; test &quot; - isn &apos;t it ?" in stream_en
    assert "Zero width &amp; &#91; brackets &#93; &#124; bars ." in stream_en
    # ... escaped but not normalised in the test set (’ -> ' as fairseq's recipe does)
    assert lines(tmp / "test.en")[0] == "He said : \u00ab no \u00bb \u2013 it &apos;s 3 @-@ 4 pm &amp; &#91; late &#93; ."
    assert lines(tmp / "test.de")[0] == "Er sagte : \u00ab nein \u00bb \u2013 es ist 3 @-@ 4 Uhr &amp; &#91; sp\u00e4t &#93; ."

    # BPE codes: 300 merges learned on train.en then train.de (not on valid or test)
    joint = tmp_path / "joint"
    joint.write_text((tmp / "train.en").read_text(encoding="utf-8") + (tmp / "train.de").read_text(encoding="utf-8"),
                     encoding="utf-8")
    expected_code = io.StringIO()
    with open(joint, encoding="utf-8") as f:
        learn_bpe(f, expected_code, 300)
    assert (fq / "code").read_text(encoding="utf-8") == expected_code.getvalue()
    assert len(lines(fq / "code")) == 301

    with open(fq / "code", encoding="utf-8") as f:
        bpe = BPE(f)
    for split in ("train", "valid"):  # cleaned on BPE units: 1-250, ratio 1.5
        pairs = [(bpe.process_line(e), bpe.process_line(d))
                 for e, d in zip(lines(tmp / f"{split}.en"), lines(tmp / f"{split}.de"))]
        kept = [(e, d) for e, d in pairs if 1 <= len(e.split()) <= 250 and 1 <= len(d.split()) <= 250
                and len(e.split()) <= 1.5 * len(d.split()) and len(d.split()) <= 1.5 * len(e.split())]
        assert 0 < len(kept) < len(pairs)
        assert list(zip(lines(fq / "bpe" / f"{split}.en"), lines(fq / "bpe" / f"{split}.de"))) == kept
    for lang in ("en", "de"):  # the test set whole: the "Yes." pair stays
        assert lines(fq / "bpe" / f"test.{lang}") == [bpe.process_line(x) for x in lines(tmp / f"test.{lang}")]
    assert any("@@ " in x for x in lines(fq / "bpe" / "train.en"))

    # one dictionary, every sentence binarized; the code and the sacreBLEU test set beside the binaries
    assert (dest / "dict.en.txt").read_text() == (dest / "dict.de.txt").read_text()
    for split in ("train", "valid", "test"):
        for lang in ("en", "de"):
            assert indexed_lengths(dest / f"{split}.en-de.{lang}") == [len(x.split()) + 1
                                                                       for x in lines(fq / "bpe" / f"{split}.{lang}")]
    assert (dest / "code").read_bytes() == (fq / "code").read_bytes()
    assert (dest / "test.sacrebleu").read_text() == "wmt14/full en-de\n"
    assert not (dest / "spm.model").exists()  # scripts/evaluate.sh removes "@@ " then

    before = all_files(tmp_path)
    proc = run_script("prepare_wmt14_en_de.sh", archives, env=env)
    assert proc.stderr.count("skip:") == 4, proc.stderr
    assert all_files(tmp_path) == before
    assert not list(tmp_path.rglob("*.tmp.*"))


def test_prepare_wmt14_names_a_missing_member_and_a_bad_recipe(tmp_path):
    archives = tmp_path / "archives"
    build_wmt_archives(archives, drop=("commoncrawl.de-en.de",))
    work, dest = tmp_path / "work", tmp_path / "data-bin"
    env = {"WORK_DIR": str(work), "DEST": str(dest), "STATMT_URL": UNREACHABLE}
    proc = run_script("prepare_wmt14_en_de.sh", archives, env=env, check=False)
    assert proc.returncode != 0
    assert f"{archives}/training-parallel-commoncrawl.tgz lacks commoncrawl.de-en.de" in proc.stderr
    assert not (work / "fairseq" / "tmp").exists() and not dest.exists()
    assert not list(tmp_path.rglob("*.tmp.*"))

    work, dest = tmp_path / "work2", tmp_path / "data-bin2"
    proc = run_script("prepare_wmt14_en_de.sh", archives, env={"WORK_DIR": str(work), "DEST": str(dest),
                                                               "RECIPE": "moses"}, check=False)
    assert proc.returncode != 0 and "RECIPE must be fairseq (the paper's data) or spm, got 'moses'" in proc.stderr
    assert not work.exists() and not dest.exists()


@pytest.mark.parametrize("recipe", ["fairseq", "spm"])
def test_prepare_wmt14_without_network_names_every_archive(tmp_path, recipe):
    work, dest = tmp_path / "work", tmp_path / "data-bin"
    proc = run_script("prepare_wmt14_en_de.sh", env={"RECIPE": recipe, "WORK_DIR": str(work), "DEST": str(dest),
                                                     "STATMT_URL": UNREACHABLE}, check=False)
    assert proc.returncode != 0
    for name, year in (("training-parallel-europarl-v7.tgz", "wmt13"), ("training-parallel-commoncrawl.tgz", "wmt13"),
                       ("training-parallel-nc-v9.tgz", "wmt14"), ("test-full.tgz", "wmt14")):
        assert f"{name}  from  {UNREACHABLE}/{year}/{name}" in proc.stderr
    # fairseq's recipe takes its valid set from the training text; spm's is newstest2013
    assert (f"dev.tgz  from  {UNREACHABLE}/wmt14/dev.tgz" in proc.stderr) == (recipe == "spm")
    assert str(work / "orig") in proc.stderr
    assert not work.exists() and not dest.exists()


# -- Multi30k -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_prepare_multi30k_on_the_sample_corpus(tmp_path):
    import sentencepiece as spm

    src = tmp_path / "src"
    src.mkdir()
    for split in ("train", "valid", "test"):
        for lang in ("de", "en"):
            text = [capitalize(x) for x in sample(split, lang)]
            if split == "valid" and lang == "en":
                text[0] = "It's \"Big\" & <b>bold</b>."  # no escaping, lowercased
            (src / f"{split}.{lang}").write_text("".join(x + "\n" for x in text), encoding="utf-8")
    work, dest = tmp_path / "work", tmp_path / "data-bin"
    env = {"WORK_DIR": str(work), "DEST": str(dest), "SPM_VOCAB": "300"}
    run_script("prepare_multi30k.sh", src, env=env)

    sp = spm.SentencePieceProcessor(model_file=str(dest / "spm.model"))
    assert sp.get_piece_size() == 300 and sp.piece_to_id("<unk>") == 0
    assert sp.bos_id() == sp.eos_id() == sp.pad_id() == -1
    for split in ("train", "valid", "test"):
        for lang in ("de", "en"):
            tok = lines(work / "tok" / f"{split}.{lang}")
            expected = sample(split, lang)  # the sample corpus is already tokenised and lowercase
            if split == "valid" and lang == "en":
                expected[0] = "it 's \" big \" & < b > bold < / b > ."
            assert tok == expected
            pieces = lines(work / "spm" / f"{split}.{lang}")
            assert [sp.decode(x.split()) for x in pieces] == tok
            assert indexed_lengths(dest / f"{split}.de-en.{lang}") == [len(x.split()) + 1 for x in pieces]
    assert (dest / "dict.de.txt").read_text() == (dest / "dict.en.txt").read_text()

    before = all_files(tmp_path)
    proc = run_script("prepare_multi30k.sh", src, env=env)
    assert proc.stderr.count("skip:") == 4
    assert all_files(tmp_path) == before


def test_prepare_multi30k_names_missing_files(tmp_path):
    (tmp_path / "train.de").write_text("a\n")
    proc = run_script("prepare_multi30k.sh", tmp_path, env={"WORK_DIR": str(tmp_path / "w"),
                                                           "DEST": str(tmp_path / "b")}, check=False)
    assert proc.returncode != 0
    assert str(tmp_path / "train.en") in proc.stderr and str(tmp_path / "test.de") in proc.stderr
    assert not (tmp_path / "w").exists() and not (tmp_path / "b").exists()


BENCH_BIN = SHARED / "multi30k-bench-bin"


@pytest.mark.skipif(not (BENCH_BIN / "spm.model").is_file() or not (SHARED / "multi30k").is_dir(),
                    reason="../shared/data/multi30k(-bench-bin) is absent")
def test_multi30k_steps_reproduce_the_bench_binaries(tmp_path):
    """Our tokenise and encode steps, with the bench data's sentencepiece model, give exactly the
    token ids of ../shared/data/multi30k-bench-bin's valid set (both sides)."""
    from fairseq.data import Dictionary, data_utils

    dictionary = Dictionary.load(str(BENCH_BIN / "dict.de.txt"))
    for lang in ("de", "en"):
        tok, enc = tmp_path / f"tok.{lang}", tmp_path / f"enc.{lang}"
        run_script("prepare_multi30k.sh", "tokenize", lang, SHARED / "multi30k" / f"valid.{lang}", tok)
        run_script("prepare_multi30k.sh", "encode", BENCH_BIN / "spm.model", tok, enc)
        ours = [dictionary.encode_line(x, add_if_not_exist=False).tolist() for x in lines(enc)]
        bench = data_utils.load_indexed_dataset(str(BENCH_BIN / f"valid.de-en.{lang}"), None)
        assert len(ours) == 1014
        assert [bench[i].tolist() for i in range(len(ours))] == ours, lang
