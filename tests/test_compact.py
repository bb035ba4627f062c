"""Compact subnetwork files: round trips (bitwise), corrupt and mismatched files, size, fuzzing."""
import hashlib
import json
import re
import shutil
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import GENERATE, SMALL, USER_DIR, build, hypotheses, run_cli
from one_layer_lottery import export
from one_layer_lottery.masking import MaskedWeight, num_kept
from one_layer_lottery.models.one_layer_transformer.embedding_file import write_embeddings
from one_layer_lottery.subnetwork import compact, file_format, file_reader
from one_layer_lottery.subnetwork.file_format import CompactFileError


def like_trained(model, seed=0):
    """Scores, LayerNorm affine parameters and biases moved as training would move them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if name.endswith("scores"):
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def first_batch(task, split="valid", max_tokens=600):
    task.load_dataset(split)
    itr = task.get_batch_iterator(dataset=task.dataset(split), max_tokens=max_tokens, seed=1)
    return next(iter(itr.next_epoch_itr(shuffle=False)))


def forward(model, batch):
    model.eval()
    with torch.no_grad():
        logits, extra = model(**batch["net_input"])
    return logits, extra["attn"][0]


def masks_of(model):
    return {name: m.mask() for name, m in model.named_modules() if isinstance(m, MaskedWeight) and m.is_masked}


def _embedding_file(path, dictionary, dim, seed):
    tokens = [dictionary[i] for i in range(dictionary.nspecial, len(dictionary), 2)]  # every other token
    write_embeddings(str(path), tokens, torch.randn(len(tokens), dim, generator=torch.Generator().manual_seed(seed)))
    return path


CASES = {
    "super_mask": ((), False),
    "topk_shared_all_trained_tensors": (("--prune-method", "topk", "--prune-ratio", 0.7, "--share-all-embeddings",
                                         "--need-bias", "--mask-layernorm-type", "normal_layernorm",
                                         "--encoder-normalize-before", "--decoder-normalize-before"), True),
    "threshold_independent_layers": (("--prune-method", "threshold", "--mask-threshold", 0.1,
                                      "--share-mask", "none"), False),
    "sigmoid_threshold_shared_scores": (("--prune-method", "sigmoid_threshold", "--mask-threshold", 0.5,
                                         "--share-mask", "layer_mask", "--mask-layernorm-type", "frozen_layernorm"),
                                        False),
    "pretrained_embeddings": (("--encoder-embed-path", "{enc}", "--decoder-embed-path", "{dec}"), False),
    "pretrained_unmasked_embeddings": (("--encoder-embed-path", "{enc}", "--embed-no-mask", "--prune-ratio", 0.3),
                                       False),
    "coats_gains_qk_scale": (("--mask-coats", 3, "--learned-gains", "--qk-init-scale", 0.5), False),
    "layers_unmasked": (("--layers-no-mask", "--mask-layernorm-type", "normal_layernorm"), False),
}


def build_case(case, sample_bin, sample_bin_joined, tmp_path):
    """(model, task, cfg) of one of the CASES, with its embedding files written to tmp_path."""
    flags, joined = case
    data = sample_bin_joined if joined else sample_bin
    if any("{" in str(f) for f in flags):
        _, task0, _ = build(data, *SMALL)
        enc = _embedding_file(tmp_path / "enc.vec", task0.source_dictionary, 32, 1)
        dec = _embedding_file(tmp_path / "dec.vec", task0.target_dictionary, 32, 2)
        flags = tuple(str(f).format(enc=enc, dec=dec) for f in flags)
    return build(data, *SMALL, *flags)


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_is_bitwise_identical(case, sample_bin, sample_bin_joined, tmp_path):
    model, task, cfg = build_case(CASES[case], sample_bin, sample_bin_joined, tmp_path)
    like_trained(model, seed=len(case))
    if case == "super_mask":
        with torch.no_grad():  # all tied: the top-k keeps the first k by index
            model.encoder.layers[1].fc1.scores.fill_(0.25)
    path = tmp_path / "sub.olls"
    size = compact.write(path, model, cfg, task)
    assert size == path.stat().st_size

    data = sample_bin_joined if CASES[case][1] else sample_bin
    for data_dir in (None, data):  # the file's own dictionaries, and the data directory's (checked)
        rebuilt, _, _ = compact.load(path, data=data_dir)
        ours, theirs = masks_of(model), masks_of(rebuilt)
        assert ours.keys() == theirs.keys() and ours
        for name in ours:
            assert torch.equal(ours[name], theirs[name]), name
        original_state, rebuilt_state = model.state_dict(), rebuilt.state_dict()
        assert original_state.keys() == rebuilt_state.keys()
        for key, value in original_state.items():
            if not key.endswith("scores"):
                assert torch.equal(value, rebuilt_state[key]), key
        batch = first_batch(task)
        for a, b in zip(forward(model, batch), forward(rebuilt, batch)):
            assert torch.equal(a, b)
    if case == "super_mask":
        tied = theirs["encoder.layers.1.fc1"].reshape(-1)
        k = num_kept(tied.numel(), 0.5)
        assert tied[:k].all() and not tied[k:].any()
    if "pretrained" in case:
        header = file_reader.read(path).header
        stored = {n for t in header["tensors"] for n in t["names"]}
        assert "encoder.embed_tokens.random.weight" in stored  # pre-trained rows are stored, not drawn
        assert header["pretrained_embeddings"]["encoder_embed_path"] == str(tmp_path / "enc.vec")


def test_header_describes_the_subnetwork(sample_bin, tmp_path):
    model, task, cfg = build(sample_bin, *SMALL, "--seed", 11, "--init", "signed_constant")
    like_trained(model)
    path = tmp_path / "sub.olls"
    compact.write(path, model, cfg, task)
    raw = path.read_bytes()
    assert raw[:8] == file_format.MAGIC and struct.unpack_from("<I", raw, 8)[0] == file_format.VERSION
    assert hashlib.sha256(raw[:-32]).digest() == raw[-32:]
    header = file_reader.read(path).header
    assert header["seed"] == 11 and header["init"]["weight_init"] == "signed_constant"
    assert header["cfg"]["model"]["encoder_layers"] == 3 and header["arch"] == "one_layer_transformer_iwslt_de_en"
    assert header["mask"] == {"method": "super_mask", "prune_ratio": 0.5, "threshold": 0.0,
                              "share_mask": "layer_weights"}
    assert {d["role"]: d["size"] for d in header["dictionaries"]} == {
        "source": len(task.source_dictionary), "target": len(task.target_dictionary)}
    # Every score tensor has its mask, 1 bit per weight; nothing random is stored.
    scores = {k: v for k, v in model.state_dict().items() if k.endswith("scores")}
    masked = {n: m for m in header["masks"] for n in m["names"]}
    assert masked.keys() == scores.keys()
    for name, entry in masked.items():
        assert entry["nbytes"] == (scores[name].numel() + 7) // 8
        assert entry["kept"] == num_kept(scores[name].numel(), 0.5)
    stored = {n for t in header["tensors"] for n in t["names"]}
    assert not any(n.endswith("random.weight") or ".shared.weights." in n for n in stored)


# -- errors --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_file(sample_bin, tmp_path_factory):
    model, task, cfg = build(sample_bin, *SMALL)
    like_trained(model)
    path = tmp_path_factory.mktemp("compact") / "small.olls"
    compact.write(path, model, cfg, task)
    return path


def test_truncated_and_flipped_files_are_refused(small_file, tmp_path):
    raw = small_file.read_bytes()
    bad = tmp_path / "bad.olls"
    for cut in (0, 5, 19, 200, len(raw) // 2, len(raw) - 1):
        bad.write_bytes(raw[:cut])
        with pytest.raises(CompactFileError, match="truncated|checksum mismatch"):
            file_reader.read(bad)
    hlen = struct.unpack_from("<Q", raw, 12)[0]
    for pos in (30, 20 + hlen + 5, len(raw) - 40, len(raw) - 1):  # header, payload (a mask), last mask byte, digest
        flipped = bytearray(raw)
        flipped[pos] ^= 0x10
        bad.write_bytes(bytes(flipped))
        with pytest.raises(CompactFileError, match="checksum mismatch: the file is corrupt"):
            compact.load(bad)
    with pytest.raises(CompactFileError, match="wrong magic"):
        file_reader.parse(b"PK\x03\x04" + raw[4:])
    with pytest.raises(CompactFileError, match="format version 3 is not supported"):
        file_reader.parse(raw[:8] + struct.pack("<I", 3) + raw[12:])
    with pytest.raises(CompactFileError, match="cannot read"):
        file_reader.read(tmp_path / "missing.olls")


def _copy_data(src, dst, edit=None):
    shutil.copytree(src, dst)
    if edit:
        path = dst / "dict.en.txt"
        path.write_text(edit(path.read_text().splitlines(keepends=True)))
    return dst


def test_wrong_dictionary_is_refused(small_file, sample_bin, tmp_path, capsys):
    swapped = _copy_data(sample_bin, tmp_path / "swapped", lambda lines: "".join([lines[1], lines[0], *lines[2:]]))
    with pytest.raises(CompactFileError, match=r"wrong dictionary: .*swapped/dict\.en\.txt .*index 4 is"):
        compact.load(small_file, data=swapped)
    longer = _copy_data(sample_bin, tmp_path / "longer", lambda lines: "".join(lines) + "neuwort 1\n")
    with pytest.raises(CompactFileError, match=r"wrong dictionary: .*longer/dict\.en\.txt \(\d+ symbols\)"):
        compact.load(small_file, data=longer)
    # The command line: an error message, no output file.
    out = tmp_path / "expanded.pt"
    with pytest.raises(SystemExit) as exit_:
        export.main(["expand", str(small_file), str(out), "--data", str(swapped)])
    assert exit_.value.code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert err.startswith("export: error: ") and "wrong dictionary" in err and len(err.splitlines()) == 1


def test_other_random_number_generator_is_refused(small_file, monkeypatch):
    from one_layer_lottery.masking import init

    original = init.derive_seed
    monkeypatch.setattr(init, "derive_seed", lambda seed, name: original(seed + 1, name))
    with pytest.raises(CompactFileError, match=r"random weights regenerated from seed 1 do not match .*this torch"):
        compact.load(small_file)


def test_random_weights_that_the_seed_does_not_give_cannot_be_written(sample_bin, tmp_path):
    model, task, cfg = build(sample_bin, *SMALL)
    with torch.no_grad():
        model.encoder.shared.weights.fc1.weight[0, 0] += 1
    out = tmp_path / "x.olls"
    out.write_bytes(b"previous")
    with pytest.raises(ValueError, match=r"random weight encoder\.shared\.weights\.fc1\.weight is not what seed 1"):
        compact.write(out, model, cfg, task)
    assert out.read_bytes() == b"previous"  # nothing half-written


def _seal(header_text: bytes, payload: bytes) -> bytes:
    body = file_format.MAGIC + struct.pack("<IQ", file_format.VERSION, len(header_text)) + header_text + payload
    return body + hashlib.sha256(body).digest()


def _split(raw):
    hlen = struct.unpack_from("<Q", raw, 12)[0]
    return json.loads(raw[20:20 + hlen]), raw[20 + hlen:-32]


def _with(raw, edit):
    header, payload = _split(raw)
    edit(header)
    return _seal(json.dumps(header).encode(), payload)


def test_consistent_but_wrong_headers_are_refused(small_file, tmp_path):
    raw = small_file.read_bytes()
    bad = tmp_path / "bad.olls"

    def set_kept(h):
        h["masks"][0]["kept"] -= 1

    cases = [
        (set_kept, r"has \d+ bits set but its header says"),
        (lambda h: h["masks"][0].update(shape=[2 ** 40, 2 ** 40]), r"bytes for \d+ bits"),
        (lambda h: h["masks"][0].update(shape=[h["masks"][0]["shape"][1], h["masks"][0]["shape"][0]]),
         r"has shape \[.*the model built from the stored config has"),
        (lambda h: h["cfg"]["model"].update(encoder_layers=10 ** 9), r"encoder_layers = 1000000000 is outside"),
        (lambda h: h["cfg"]["model"].update(encoder_layers=1000, encoder_embed_dim=60000),
         r"would allocate up to \d+ weights, more than the limit"),
        (lambda h: h["cfg"]["model"].update(encoder_layers=2), r"not a mask of the model built from the stored config"),
        (lambda h: h["cfg"]["model"].update(prune_ratio="half"), r"stored model configuration does not build"),
        (lambda h: h["cfg"]["model"].update(_name="transformer"), r"not a one_layer_transformer architecture"),
        (lambda h: h["mask"].update(prune_ratio=0.25), r"header's mask rule .* disagrees"),
        (lambda h: h["random_weights"].update(names=h["random_weights"]["names"][1:]), r"list of random weights"),
    ]
    for edit, message in cases:
        bad.write_bytes(_with(raw, edit))
        with pytest.raises(CompactFileError, match=message):
            compact.load(bad)


def test_a_mask_the_method_cannot_produce_is_refused(small_file, tmp_path):
    # super_mask keeps exactly k: a (consistently stated) mask keeping one more is refused, not changed.
    header, payload = _split(small_file.read_bytes())
    entry = header["masks"][0]
    payload = bytearray(payload)
    mask = np.unpackbits(np.frombuffer(bytes(payload[entry["offset"]:entry["offset"] + entry["nbytes"]]), np.uint8),
                         bitorder="little")
    removed = int(np.flatnonzero(mask == 0)[0])
    payload[entry["offset"] + removed // 8] |= 1 << (removed % 8)
    entry["kept"] += 1
    bad = tmp_path / "bad.olls"
    bad.write_bytes(_seal(json.dumps(header).encode(), bytes(payload)))
    assert file_reader.read(bad).mask(entry).sum() == entry["kept"]
    with pytest.raises(CompactFileError, match=r"keeps \d+ of \d+ weights, but --prune-ratio 0.5 with super_mask"):
        compact.load(bad)


# -- fuzzing the reader ----------------------------------------------------------------------------

FUZZ = settings(max_examples=150, deadline=5000, suppress_health_check=[HealthCheck.too_slow])


def _exercise(data):
    """parse() and every accessor either work or raise CompactFileError; nothing else."""
    try:
        cf = file_reader.parse(data)
    except CompactFileError:
        return False
    for entry in cf.header["masks"]:
        try:
            cf.mask(entry)
        except CompactFileError:
            pass
    for entry in cf.header["tensors"]:
        cf.tensor(entry)
    for entry in cf.header["dictionaries"]:
        try:
            cf.dictionary(entry)
        except CompactFileError:
            pass
    return True


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(data):
    with pytest.raises(CompactFileError):
        file_reader.parse(data)
    with pytest.raises(CompactFileError):
        file_reader.parse(file_format.MAGIC + struct.pack("<I", file_format.VERSION) + data)


@FUZZ
@given(cut=st.integers(min_value=0), flip=st.tuples(st.integers(min_value=0), st.integers(1, 255)))
def test_fuzz_truncated_and_flipped(small_file, cut, flip):
    raw = small_file.read_bytes()
    with pytest.raises(CompactFileError):
        file_reader.parse(raw[:cut % len(raw)])
    pos, mask = flip
    flipped = bytearray(raw)
    flipped[pos % len(raw)] ^= mask
    with pytest.raises(CompactFileError):
        file_reader.parse(bytes(flipped))


NASTY = st.one_of(
    st.integers(-2 ** 70, 2 ** 70), st.sampled_from([2 ** 62, 2 ** 40, 2 ** 31, -1, 0, 1, 7]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6), st.none(), st.booleans(),
    st.lists(st.one_of(st.integers(-2 ** 66, 2 ** 66), st.floats(), st.text(max_size=2)), max_size=10),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
)
FIELDS = [("masks", "shape"), ("masks", "offset"), ("masks", "nbytes"), ("masks", "kept"), ("masks", "names"),
          ("tensors", "dtype"), ("tensors", "shape"), ("tensors", "offset"), ("tensors", "nbytes"),
          ("tensors", "names"), ("dictionaries", "size"), ("dictionaries", "offset"), ("dictionaries", "nbytes"),
          ("dictionaries", "role"), ("dictionaries", "sha256"), ("random_weights", "names"),
          ("random_weights", "sha256"), ("mask", "prune_ratio"), ("mask", "method"), ("mask", "threshold"),
          ("seed", None), ("format", None), ("cfg", None), ("masks", None), ("tensors", None),
          ("dictionaries", None), ("random_weights", None)]


@FUZZ
@given(changes=st.lists(st.tuples(st.sampled_from(FIELDS), st.integers(0, 10 ** 6), NASTY), min_size=1, max_size=4))
@example(changes=[(("tensors", "dtype"), 0, [])])  # once raised TypeError (unhashable) instead of CompactFileError
def test_fuzz_consistent_headers_with_bad_values(small_file, changes):
    header, payload = _split(small_file.read_bytes())
    for (group, key), index, value in changes:
        target = header[group]
        if key is None:
            header[group] = value
            continue
        if isinstance(target, list):
            if not target:
                continue
            target = target[index % len(target)]
        if isinstance(target, dict):
            target[key] = value
    # NaN / Infinity literals go into the header as they would in a crafted file.
    data = _seal(json.dumps(header, allow_nan=True).encode(), payload)
    _exercise(data)


@FUZZ
@given(st.text(max_size=300), st.binary(max_size=64))
def test_fuzz_header_text(text, payload):
    _exercise(_seal(text.encode("utf-8", "surrogatepass"), payload))


def test_hostile_headers_fail_fast():
    for text in ("[" * 100000, '{"a":' * 50000 + "1" + "}" * 50000, "9" * 100000, "NaN", '{"cfg": Infinity}',
                 "\xff\xfe", "{}", "[]", "null"):
        data = _seal(text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text, b"")
        with pytest.raises(CompactFileError):
            file_reader.parse(data)
    # A length field far beyond the file: refused before anything is allocated.
    huge = file_format.MAGIC + struct.pack("<IQ", file_format.VERSION, 2 ** 63) + b"x" * 64
    with pytest.raises(CompactFileError, match="header length"):
        file_reader.parse(huge)


# -- size ------------------------------------------------------------------------------------------

def _synthetic_vocabulary(path, n=10000):
    path.mkdir()
    for lang in ("de", "en"):
        (path / f"dict.{lang}.txt").write_text("".join(f"{lang}{i} {n - i}\n" for i in range(n)))
    return path


def test_iwslt_shape_compact_file_is_25x_smaller_than_the_model_state(tmp_path):
    data = _synthetic_vocabulary(tmp_path / "vocab")
    model, task, cfg = build(data, "--source-lang", "de", "--target-lang", "en", "--share-decoder-input-output-embed")
    assert len(task.source_dictionary) == 10004 and model.encoder.embed_tokens.embedding_dim == 512
    state_bytes = export.state_bytes(model.state_dict())
    path = tmp_path / "iwslt.olls"
    compact_bytes = compact.write(path, model, cfg, task)
    assert state_bytes >= 25 * compact_bytes, (state_bytes, compact_bytes)
    # The masks are all there: one bit per score, nothing else of size.
    header = file_reader.read(path).header
    n_scores = sum(v.numel() for k, v in model.state_dict().items() if k.endswith("scores"))
    assert sum(m["nbytes"] for m in header["masks"]) == sum((torch.Size(m["shape"]).numel() + 7) // 8
                                                            for m in header["masks"])
    assert n_scores / 8 <= compact_bytes <= n_scores / 8 * 1.05


# -- end to end ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_checkpoint_compact_expand_generate_identical(trained_sample, trained_sample_generate, tmp_path, capsys):
    out = tmp_path / "sub.olls"
    assert export.main(["compact", str(trained_sample.checkpoint), str(out)]) == 0
    sizes = re.search(r"wrote .*: (\d+) bytes; the checkpoint's model state is (\d+) bytes", capsys.readouterr().out)
    assert sizes and int(sizes.group(1)) == out.stat().st_size
    assert int(sizes.group(2)) > 20 * int(sizes.group(1))

    # Real forward passes: the checkpoint's model and the compact file's, bitwise.
    original, _, task, _ = export.load_checkpoint(trained_sample.checkpoint)
    rebuilt, _, _ = compact.load(out, data=trained_sample.data)
    batch = first_batch(task, "test", max_tokens=2000)
    for a, b in zip(forward(original, batch), forward(rebuilt, batch)):
        assert torch.equal(a, b)

    expanded = tmp_path / "expanded.pt"
    assert export.main(["expand", str(out), str(expanded), "--data", str(trained_sample.data)]) == 0
    gen = run_cli("fairseq-generate", trained_sample.data, "--user-dir", USER_DIR, "--path", expanded, *GENERATE)
    want, got = hypotheses(trained_sample_generate), hypotheses(gen.stdout)
    assert len(want) == 300 and got == want
    # Same scores too, to the last printed digit.
    positional = re.compile(r"^P-\d+\t.*$", re.M)
    assert positional.findall(gen.stdout) == positional.findall(trained_sample_generate)
