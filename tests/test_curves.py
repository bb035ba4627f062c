"""Validation curves read from fairseq-train logs (the Multi30k experiment's plot)."""
import pytest

from one_layer_lottery import curves

LOG = """2026-11-24 05:30:59 | INFO | train_inner | epoch 001:     25 / 127 loss=10.6, num_updates=25
2026-11-24 05:30:59 | INFO | valid | epoch 003 | valid on 'valid' subset | loss 6.008 | nll_loss 4.891 | ppl 29.68 | bleu 6.72 | wps 182.9 | num_updates 300
2026-11-24 05:35:58 | INFO | valid | epoch 004 | valid on 'valid' subset | loss 5.574 | nll_loss 4.408 | ppl 21.23 | bleu 13.7 | wps 268.3 | num_updates 400 | best_bleu 13.7
"""


def test_reads_every_validation_and_plots(tmp_path, capsys):
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_text(LOG)
    b.write_text(LOG.replace("bleu 13.7 ", "bleu 20.5 "))
    assert curves.read_validations(a) == [(300, 6.72), (400, 13.7)]
    assert curves.read_validations(a, "nll_loss") == [(300, 4.891), (400, 4.408)]
    png = tmp_path / "c.png"
    curves.main([str(png), f"x={a}", f"y={b}"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| run | 300 | 400 |"
    assert table[2:] == ["| x | 6.72 | 13.70 |", "| y | 6.72 | 20.50 |"]


def test_a_log_without_validations_is_an_error_that_names_it(tmp_path, capsys):
    empty = tmp_path / "empty.log"
    empty.write_text(LOG.splitlines()[0] + "\n")
    with pytest.raises(SystemExit):
        curves.main([str(tmp_path / "x.png"), f"run={empty}"])
    assert "empty.log: no validation lines" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(SystemExit):
        curves.main([str(tmp_path / "x.png"), "no-equals-sign"])
