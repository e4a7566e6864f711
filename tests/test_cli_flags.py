"""Issue 13, item 14: flag names agree across commands, every flag has help, usage errors show
the subcommand's usage, and bench's percentile prose lives in --help."""

from __future__ import annotations

import argparse

import pytest

from mnv3.cli.main import build_parser, main


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _options(p: argparse.ArgumentParser) -> set[str]:
    return {s for a in p._actions for s in a.option_strings}


def test_every_flag_has_help_text():
    missing = [(name, a.option_strings) for name, p in _commands().items() for a in p._actions
               if a.option_strings and not (a.help or "").strip()]
    assert missing == []


@pytest.mark.parametrize("canonical, old", [("--batch-size", "--batch"),
                                            ("--synsets", "--synsets-file")])
def test_one_name_per_meaning_old_spellings_are_aliases(canonical, old):
    """A command that takes the old spelling also takes the canonical one, for the same dest."""
    for name, p in _commands().items():
        by_flag = {s: a for a in p._actions for s in a.option_strings}
        if old in by_flag:
            assert canonical in by_flag and by_flag[canonical] is by_flag[old], name


def test_data_flags_agree_between_infer_and_run():
    infer, run = _options(_commands()["infer"]), _options(_commands()["run"])
    for flag in ("--dataset", "--image-dir", "--label-file", "--synsets", "--image-num"):
        assert flag in infer and flag in run, flag


def test_run_dataset_resolves_like_infer(tmp_path):
    from mnv3.cli.run_cmd import _resolve_dataset

    (tmp_path / "images").mkdir()
    (tmp_path / "labels.txt").write_text("")
    (tmp_path / "synsets.txt").write_text("")
    args = build_parser().parse_args(["run", "--dataset", str(tmp_path)])
    _resolve_dataset(args)
    assert (args.image_dir, args.label_file, args.synsets_file) == (
        str(tmp_path / "images"), str(tmp_path / "labels.txt"), str(tmp_path / "synsets.txt"))
    args = build_parser().parse_args(["bench", "--model", "m", "--batch", "4"])
    assert args.batch == 4 and build_parser().parse_args(
        ["bench", "--model", "m", "--batch-size", "4"]).batch == 4


@pytest.mark.parametrize("value, ok", [("true", True), ("False", True), ("yes", False),
                                       ("1", False)])
def test_shape_mutable_accepts_what_its_help_says(value, ok, capsys):
    help_text = _commands()["build"].format_help()
    assert "--shape-mutable true|false" in help_text
    argv = ["build", "--onnx", "m.onnx", "--quant-mode", "force_float32", "--shape-mutable",
            value, "--batch-size", "1"]
    if ok:
        assert build_parser().parse_args(argv).shape_mutable is (value.lower() == "true")
    else:
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)
        assert f"expected true or false, got '{value}'" in capsys.readouterr().err


def test_unknown_flag_prints_the_subcommand_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["infer", "--model", "m", "--output-dir", "o", "--bogus"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.startswith("usage: mnv3 infer ") and "--output-dir O" in err
    assert err.rstrip().endswith("mnv3 infer: error: unrecognized arguments: --bogus")


def test_bench_percentile_definition_in_help_not_in_every_result():
    from mnv3.report import format_bench
    from test_report import bench

    assert "Hyndman & Fan type 7" in _commands()["bench"].format_help()
    text = format_bench(bench("force_float32_false_8", 2000.0, 8))
    assert "percentile" not in text.lower() and "p95" in text
