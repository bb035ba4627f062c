from conftest import ROOT
from one_layer_lottery import sample_corpus


def test_shipped_sample_corpus_is_what_the_generator_writes(tmp_path):
    sample_corpus.write(tmp_path)
    for split in ("train", "valid", "test"):
        for lang in ("de", "en"):
            name = f"{split}.{lang}"
            assert (tmp_path / name).read_bytes() == (ROOT / "data" / "sample" / name).read_bytes(), name


def test_splits_are_disjoint_aligned_and_agree_in_case():
    splits = sample_corpus.generate()
    assert [len(v) for v in splits.values()] == [4000, 300, 300]
    seen = [set(v) for v in splits.values()]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    for de, en in splits["train"]:
        assert de.endswith(" .") and en.endswith(" .")
        assert (" nicht" in de) == ("does not" in en)
        assert " den junge " not in de + " "  # weak noun: den jungen
