"""infer --shard K/N and mnv3 merge (issue 18): N drivers share one run, and the merged folder
holds the files one unsharded run writes, byte for byte; shards that do not fit are refused
before anything is written."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil

import pytest

from conftest import FakeSession, fake_meta
from mnv3.data.datasets import Sample, demo_dataset
from mnv3.errors import DataError, UsageError
from mnv3.inference import infer
from mnv3.shards import Shard, merge

PER_IMAGE = ("eval_labels.txt", "eval_result_1.txt", "eval_result_5.txt", "results.jsonl",
             "skipped.txt", "eval_result.txt")


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """The demo photos plus one undecodable file in the middle, in one folder."""
    d = tmp_path_factory.mktemp("shard_images")
    out = []
    for i, s in enumerate(demo_dataset()):
        shutil.copy(s.path, d / s.path.name)
        out.append(Sample(d / s.path.name, s.label))
        if i == 9:
            (d / "broken.JPEG").write_bytes(b"\xff\xd8 not a jpeg")
            out.append(Sample(d / "broken.JPEG", 3))
    return out


def _files(folder):
    return {n: (folder / n).read_bytes() for n in PER_IMAGE if (folder / n).is_file()}


def _run(samples, out, **kw):
    return infer(FakeSession(fake_meta(batch=4)), samples, out, progress=False, **kw)


def test_merged_shards_equal_one_run_byte_for_byte(samples, tmp_path):
    whole = _run(samples, tmp_path / "whole")
    dirs = [tmp_path / f"s{k}" for k in (1, 2, 3)]
    parts = [_run(samples, d, shard=f"{k}/3") for k, d in zip((1, 2, 3), dirs)]
    assert [p.images for p in parts] == [p.shard["images"] for p in parts]
    assert sum(p.shard["images"] for p in parts) == len(samples) == whole.images
    assert [p.shard["first"] for p in parts] == [0, 9, 19]  # 29 images: 9, 10, 10
    assert sum(p.skipped for p in parts) == 1

    random.Random(0).shuffle(dirs)  # any order on the command line
    merged = merge(dirs, tmp_path / "all")
    assert _files(tmp_path / "all") == _files(tmp_path / "whole")
    assert "skipped.txt" in _files(tmp_path / "all")
    for key in ("images", "processed", "skipped", "labeled", "top1_correct", "top5_correct",
                "top1", "top5", "skipped_files"):
        assert getattr(merged, key) == getattr(whole, key), key
    summary = json.loads((tmp_path / "all" / "infer.json").read_text())
    assert [s["index"] for s in summary["shards"]] == [1, 2, 3]
    assert not [p for p in (tmp_path / "all").iterdir() if p.name.startswith(".")]


def test_a_shard_keeps_the_whole_runs_names(samples, tmp_path):
    """Its images named relative to the folder all images share, not to its own slice."""
    nested = tmp_path / "tree"
    (nested / "a").mkdir(parents=True)
    (nested / "b").mkdir()
    moved = []
    for i, s in enumerate(samples[:8]):
        dest = nested / ("a" if i < 4 else "b") / s.path.name
        shutil.copy(s.path, dest)
        moved.append(Sample(dest, s.label))
    _run(moved, tmp_path / "whole")
    _run(moved, tmp_path / "s2", shard="2/2")  # only b/ images: their root would be b/
    tail = (tmp_path / "whole" / "eval_result_1.txt").read_text().splitlines()[4:]
    assert (tmp_path / "s2" / "eval_result_1.txt").read_text().splitlines() == tail
    assert tail[0].startswith("b/")


@pytest.mark.parametrize("text,why", [("0/2", "between 1 and N"), ("3/2", "between 1 and N"),
                                      ("a/b", "takes K/N"), ("2", "takes K/N")])
def test_bad_shard_flags_say_what_to_write(text, why):
    with pytest.raises(UsageError, match=why):
        Shard.parse(text)


def test_more_shards_than_images_is_refused(samples, tmp_path):
    with pytest.raises(UsageError, match="cannot fill 40 shards; use at most 29"):
        _run(samples, tmp_path / "o", shard="40/40")
    assert not (tmp_path / "o").exists()


@pytest.fixture
def two(samples, tmp_path):
    for k in (1, 2):
        _run(samples, tmp_path / f"s{k}", shard=f"{k}/2")
    return tmp_path / "s1", tmp_path / "s2"


def _refused(dirs, out, match):
    with pytest.raises((DataError, UsageError), match=match):
        merge(dirs, out)
    assert not out.exists()  # nothing written


def test_merge_refuses_shards_that_do_not_fit(samples, two, tmp_path):
    s1, s2 = two
    _refused([s1], tmp_path / "m", r"missing 2/2")
    _refused([s1, s1, s2], tmp_path / "m", r"given twice 1/2")
    _run(samples, tmp_path / "other", shard="2/2", image_num=20)  # another image list
    _refused([s1, tmp_path / "other"], tmp_path / "m", "are shards of different runs")
    _run(samples[:1] + samples[1:], tmp_path / "three", shard="2/3")
    _refused([s1, tmp_path / "three"], tmp_path / "m", "different runs .*count")
    _run(samples, tmp_path / "plain")
    _refused([s1, tmp_path / "plain"], tmp_path / "m", "names no shard")
    _refused([s1, tmp_path / "nowhere"], tmp_path / "m", "not a folder")
    before = _files(s1)
    with pytest.raises(UsageError, match="is one of the shards"):
        merge([s1, s2], s1)
    assert _files(s1) == before  # the shard's own files untouched


def test_merge_refuses_another_model(samples, two, tmp_path):
    s1, _ = two
    meta = dataclasses.replace(fake_meta(batch=4), compiled_sha256="0" * 64)
    infer(FakeSession(meta), samples, tmp_path / "s2x", progress=False, shard="2/2")
    _refused([s1, tmp_path / "s2x"], tmp_path / "m", "different runs .*model_sha256")


def test_merge_refuses_a_shard_with_a_missing_file(two, tmp_path):
    s1, s2 = two
    merge([s1, s2], tmp_path / "earlier")
    before = _files(tmp_path / "earlier")
    (s2 / "results.jsonl").unlink()
    _refused([s1, s2], tmp_path / "m", "results.jsonl is missing; run that shard again")
    with pytest.raises(DataError, match="results.jsonl is missing"):
        merge([s1, s2], tmp_path / "earlier")
    assert _files(tmp_path / "earlier") == before  # an earlier merge there is left whole


def test_cli_infer_shard_then_merge(tiny_model, tmp_path, capsys):
    """The commands of the README: two shards through `mnv3 infer`, joined by `mnv3 merge`."""
    import mnv3
    from mnv3.cli.main import main
    from mnv3.meta import PreprocessCfg

    tiny = tiny_model(dynamic=True, images=7)
    model = tmp_path / "m"
    mnv3.build(tiny.onnx, model, quant_mode="force_float32", shape_mutable=False, batch_size=2,
               preprocess=PreprocessCfg(resize=36, crop=32), options={"progress": False})
    base = ["infer", "--model", str(model), "--image-dir", str(tiny.images), "--no-progress"]
    assert main([*base, "--output-dir", str(tmp_path / "whole")]) == 0
    for k in (1, 2):
        assert main([*base, "--shard", f"{k}/2", "--output-dir", str(tmp_path / f"s{k}")]) == 0
    assert "shard 2/2: images 4-7 of 7; join the shards with 'mnv3 merge'" in capsys.readouterr().out
    assert main(["merge", str(tmp_path / "s2"), str(tmp_path / "s1"),
                 "--output-dir", str(tmp_path / "all")]) == 0
    assert "merged 2 shards: 7 images predicted" in capsys.readouterr().out
    assert _files(tmp_path / "all") == _files(tmp_path / "whole")
    assert main([*base, "--engine", "cpp", "--shard", "1/2",
                 "--output-dir", str(tmp_path / "c")]) == 2
    assert "--shard runs with --engine python or ray" in capsys.readouterr().err


def test_merge_says_the_model_was_below_its_budget(samples, tmp_path, capsys):
    """As mnv3 infer does: an accuracy from a model shipped with --allow-below-budget is never
    printed without that note."""
    from mnv3.cli.main import main

    for k in (1, 2):  # within its budget: the accuracy, no note, and labels were given
        infer(FakeSession(fake_meta(batch=4)), samples, tmp_path / f"w{k}", progress=False,
              shard=f"{k}/2")
    assert main(["merge", str(tmp_path / "w1"), str(tmp_path / "w2"),
                 "--output-dir", str(tmp_path / "within")]) == 0
    out = capsys.readouterr().out
    assert "top1 accuracy" in out and "note:" not in out and "no labels given" not in out
    meta = dataclasses.replace(fake_meta(batch=4),
                               fidelity={"below_budget": ["top-1 agreement 90.0% < 99.0%"]})
    for k in (1, 2):
        infer(FakeSession(meta), samples, tmp_path / f"s{k}", progress=False, shard=f"{k}/2")
    assert main(["merge", str(tmp_path / "s1"), str(tmp_path / "s2"),
                 "--output-dir", str(tmp_path / "all")]) == 0
    out = capsys.readouterr().out
    assert "note: this model was built BELOW its accuracy budget (top-1 agreement 90.0% < " \
           "99.0%)" in out and "no labels given" not in out
    summary = json.loads((tmp_path / "all" / "infer.json").read_text())
    assert all(s["below_budget"] for s in summary["shards"])
