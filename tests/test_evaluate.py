"""evaluate: topk_correct, the seed's file-based accuracy, and `mnv3 eval` on infer's files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mnv3.cli.main import main
from mnv3.errors import DataError
from mnv3.evaluation import evaluate_files, topk_correct, topk_indices


def test_topk_correct_small_example():
    logits = np.array([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0, 0.5],
                       [0.9, 0.1, 0.8, 0.7, 0.6, 0.5, 0.4],
                       [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]], dtype=np.float32)
    ok = topk_correct(logits, [1, 5, 0], ks=(1, 5))
    assert ok[1].tolist() == [True, False, False]
    assert ok[5].tolist() == [True, True, True]  # ties (row 2) go to the lower index


def test_topk_indices_ties_and_order():
    top = topk_indices(np.array([[1.0, 3.0, 3.0, 2.0]]), 3)
    assert top.tolist() == [[1, 2, 3]]
    with pytest.raises(ValueError):
        topk_indices(np.zeros(4), 1)


def test_topk_correct_agrees_with_a_naive_loop():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(64, 20))
    labels = rng.integers(0, 20, size=64)
    ok = topk_correct(logits, labels, ks=(1, 3, 5))
    for k in (1, 3, 5):
        naive = [labels[i] in sorted(range(20), key=lambda c: -logits[i, c])[:k] for i in range(64)]
        assert ok[k].tolist() == naive


def _seed_script(label_file, r1, r5):
    """compute_top1_and_top5.py's rule, written out naively (lines compared without newline)."""
    labels = [line for line in label_file.read_text().splitlines() if line.strip()]
    top1 = r1.read_text().splitlines()
    top5 = r5.read_text().splitlines()
    c1 = sum(1 for label in labels for line in top1 if label == line)
    c5 = sum(1 for label in labels for line in top5 if label == line)
    return c1 / len(labels), c5 / len(labels)


def _write_results(d, rows):
    """rows: (name, label, top5 list)."""
    (d / "l.txt").write_text("".join(f"{n} {lab}\n" for n, lab, _ in rows))
    (d / "r1.txt").write_text("".join(f"{n} {t[0]}\n" for n, _, t in rows))
    (d / "r5.txt").write_text("".join(f"{n} {c}\n" for n, _, t in rows for c in t))
    return d / "l.txt", d / "r1.txt", d / "r5.txt"


def test_evaluate_files_matches_the_seed_rule(tmp_path):
    rows = [("a.JPEG", 3, [3, 1, 2, 4, 5]), ("b.JPEG", 7, [1, 7, 2, 4, 5]),
            ("c.JPEG", 9, [1, 2, 3, 4, 5]), ("d.JPEG", 0, [0, 9, 8, 7, 6])]
    files = _write_results(tmp_path, rows)
    res = evaluate_files(*files, out_file=tmp_path / "acc.txt")
    assert (res.top1, res.top5) == _seed_script(*files) == (0.5, 0.75)
    assert (tmp_path / "acc.txt").read_text() == "top1 accuracy: 0.500000\ntop5 accuracy: 0.750000\n"
    assert res.missing == 0


def test_evaluate_files_missing_predictions_count_as_wrong(tmp_path):
    l, r1, r5 = _write_results(tmp_path, [("a.JPEG", 3, [3, 1, 2, 4, 5])])
    l.write_text("a.JPEG 3\nb.JPEG 4\n")
    res = evaluate_files(l, r1, r5)
    assert (res.top1, res.missing) == (0.5, 1)


def test_evaluate_files_errors(tmp_path):
    l, r1, r5 = _write_results(tmp_path, [("a.JPEG", 3, [3, 1, 2, 4, 5])])
    with pytest.raises(DataError, match="does not exist"):
        evaluate_files(tmp_path / "none.txt", r1, r5)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DataError, match="no lines"):
        evaluate_files(tmp_path / "empty.txt", r1, r5)


def test_eval_cli_prints_the_seed_lines_and_accepts_seed_flags(tmp_path, capsys):
    l, r1, r5 = _write_results(tmp_path, [("a.JPEG", 3, [3, 1, 2, 4, 5]),
                                          ("b.JPEG", 4, [1, 4, 2, 3, 5])])
    assert main(["eval", "--result-label-file", str(l), "--result-1-file", str(r1),
                 "--result-5-file", str(r5), "--top1andtop5-file", str(tmp_path / "o.txt")]) == 0
    out = capsys.readouterr().out
    assert out == "top1 accuracy: 0.500000\ntop5 accuracy: 1.000000\n"
    assert (tmp_path / "o.txt").read_text() == out
    assert main(["eval", "--result_label_file", str(l), "--result_1_file", str(r1),
                 "--result_5_file", str(r5), "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["top1_correct"] == 1


def test_eval_cli_missing_file_is_a_data_error(tmp_path, capsys):
    code = main(["eval", "--result-label-file", str(tmp_path / "x"), "--result-1-file", "y",
                 "--result-5-file", "z"])
    assert code == 3
    assert "does not exist" in capsys.readouterr().err
