"""infer: result files, accuracy, skipping, --image-num, --save-images, atomic outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import FAKE_CFG as CFG
from conftest import FakeSession, fake_meta
from mnv3.data.datasets import Sample, demo_dataset, load_class_names, demo_dir
from mnv3.data.preprocess import preprocess_batch
from mnv3.errors import DataError
from mnv3.evaluation import evaluate_files, topk_correct
from mnv3.inference import infer


@pytest.fixture(scope="module")
def demo():
    return demo_dataset()


def _read(path):
    return path.read_text().splitlines()


def test_result_files_match_the_model_and_round_trip_through_eval(demo, tmp_path):
    session = FakeSession(fake_meta(batch=4))
    result = infer(session, demo, tmp_path, progress=False)
    assert result.processed == len(demo) and result.skipped == 0 and result.labeled == len(demo)
    assert set(session.calls) == {4}  # fixed batch: every engine call gets a full batch

    logits = session.predict(preprocess_batch([s.path for s in demo], CFG))
    labels = [s.label for s in demo]
    ok = topk_correct(logits, labels)
    assert result.top1_correct == ok[1].sum() and result.top5_correct == ok[5].sum()
    assert result.top1 == pytest.approx(ok[1].mean()) and result.top5 == pytest.approx(ok[5].mean())

    assert _read(tmp_path / "eval_labels.txt")[0] == f"{demo[0].path.name} {demo[0].label}"
    assert len(_read(tmp_path / "eval_result_1.txt")) == len(demo)
    assert len(_read(tmp_path / "eval_result_5.txt")) == 5 * len(demo)
    assert _read(tmp_path / "eval_result.txt") == [
        f"top1 accuracy: {result.top1:f}", f"top5 accuracy: {result.top5:f}"]
    ev = evaluate_files(tmp_path / "eval_labels.txt", tmp_path / "eval_result_1.txt",
                        tmp_path / "eval_result_5.txt")
    assert (ev.top1_correct, ev.top5_correct, ev.total) == (
        result.top1_correct, result.top5_correct, len(demo))

    rows = [json.loads(line) for line in _read(tmp_path / "results.jsonl")]
    names = load_class_names(demo_dir() / "synsets.txt")
    assert rows[0]["file"] == demo[0].path.name and rows[0]["label"] == demo[0].label
    assert rows[0]["names"] == [names[i] for i in rows[0]["top5"]]
    assert rows[0]["probs"] == sorted(rows[0]["probs"], reverse=True)
    assert result.images_per_s > 0 and result.engine_seconds > 0
    assert not (tmp_path / "skipped.txt").exists()


def test_accuracy_is_one_when_the_model_is_right(demo, tmp_path):
    x = preprocess_batch([s.path for s in demo], CFG)
    oracle = {tuple(np.round(p, 4)): s.label for p, s in zip(x.mean(axis=(2, 3)), demo)}
    result = infer(FakeSession(fake_meta(batch=3), oracle=oracle), demo, tmp_path, progress=False)
    assert (result.top1, result.top5) == (1.0, 1.0)


def test_image_num_and_mutable_batch(demo, tmp_path):
    session = FakeSession(fake_meta(batch=1, mutable=True))
    result = infer(session, demo, tmp_path, batch_size=8, image_num=11, progress=False)
    assert result.images == result.processed == 11
    assert session.calls == [8, 3]
    assert len(_read(tmp_path / "eval_result_1.txt")) == 11


def test_corrupt_images_skipped_listed_and_strict(demo, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    good = []
    for s in demo[:5]:
        (data / s.path.name).write_bytes(s.path.read_bytes())
        good.append(Sample(data / s.path.name, s.label))
    jpeg = demo[0].path.read_bytes()
    (data / "truncated.JPEG").write_bytes(jpeg[: len(jpeg) // 3])
    (data / "zero.JPEG").write_bytes(b"")
    (data / "text.JPEG").write_text("this is text, not a JPEG\n")
    bad = [Sample(data / n, 0) for n in ("truncated.JPEG", "zero.JPEG", "text.JPEG")]
    samples = sorted(good + bad, key=lambda s: str(s.path))

    out = tmp_path / "out"
    result = infer(FakeSession(fake_meta()), samples, out, progress=False)
    assert result.processed == 5 and result.skipped == 3 and result.labeled == 5
    listed = dict(line.split("\t", 1) for line in _read(out / "skipped.txt"))
    assert set(listed) == {"truncated.JPEG", "zero.JPEG", "text.JPEG"}
    assert len(_read(out / "eval_labels.txt")) == 5

    with pytest.raises(DataError, match="--strict"):
        infer(FakeSession(fake_meta()), samples, tmp_path / "strict", strict=True, progress=False)
    assert not (tmp_path / "strict" / "eval_result.txt").exists()


def test_unlabeled_images_give_no_accuracy(demo, tmp_path):
    samples = [Sample(s.path, None) for s in demo[:4]]
    (tmp_path / "eval_result.txt").write_text("top1 accuracy: 0.99\n")  # stale from another run
    result = infer(FakeSession(fake_meta()), samples, tmp_path, progress=False)
    assert result.top1 is None and result.top5 is None and result.labeled == 0
    assert not (tmp_path / "eval_result.txt").exists()
    assert not (tmp_path / "eval_labels.txt").exists()
    assert len(_read(tmp_path / "eval_result_1.txt")) == 4


def test_crash_midway_leaves_no_accuracy_file(demo, tmp_path):
    class Exploding(FakeSession):
        def _run(self, batch):
            if len(self.calls) == 2:
                raise RuntimeError("engine died")
            return super()._run(batch)

    (tmp_path / "eval_result.txt").write_text("top1 accuracy: 0.5\n")
    infer(FakeSession(fake_meta()), demo[:4], tmp_path, progress=False)
    before = (tmp_path / "eval_result.txt").read_text()
    with pytest.raises(RuntimeError):
        infer(Exploding(fake_meta()), demo, tmp_path, progress=False)
    # the previous, complete run's files are untouched and consistent with each other
    assert (tmp_path / "eval_result.txt").read_text() == before
    assert len(_read(tmp_path / "eval_result_1.txt")) == 4


def test_ctrl_c_leaves_nothing_partial(demo, tmp_path):
    import threading

    class Interrupted(FakeSession):
        def _run(self, batch):
            if self.calls:
                raise KeyboardInterrupt
            return super()._run(batch)

    before = threading.active_count()
    with pytest.raises(KeyboardInterrupt):
        infer(Interrupted(fake_meta()), demo, tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()  # the folder it made is gone, not left empty
    assert threading.active_count() <= before  # decode threads are gone
    (tmp_path / "mine").mkdir()  # a folder the user had: kept, with what was in it
    (tmp_path / "mine" / "eval_result_1.txt").write_text("earlier run\n")
    with pytest.raises(KeyboardInterrupt):
        infer(Interrupted(fake_meta()), demo, tmp_path / "mine", progress=False)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["eval_result_1.txt"]
    assert (tmp_path / "mine" / "eval_result_1.txt").read_text() == "earlier run\n"


def test_unwritable_output_folder_fails_before_any_work(demo, tmp_path, monkeypatch):
    from mnv3.errors import UsageError

    (tmp_path / "file").write_text("in the way")
    session = FakeSession(fake_meta())
    with pytest.raises(UsageError, match="choose a writable --output-dir"):
        infer(session, demo, tmp_path / "file" / "out", progress=False)
    import mnv3.results as results_mod

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(results_mod.tempfile, "TemporaryFile", refuse)  # as a read-only folder
    with pytest.raises(UsageError, match="cannot write into output folder .*Permission denied"):
        infer(session, demo, tmp_path / "ro", progress=False)
    assert session.calls == []


def test_save_images_writes_viewable_annotated_copies(demo, tmp_path):
    infer(FakeSession(fake_meta()), demo[:3], tmp_path, save_images=True, progress=False)
    for s in demo[:3]:
        copy = tmp_path / "images" / s.path.name
        with Image.open(copy) as im:
            im.load()
            assert im.size == Image.open(s.path).size and im.mode == "RGB"
            # the label box is drawn in the top-left corner
            assert im.getpixel((1, 1)) == (0, 0, 0) or sum(im.getpixel((1, 1))) < 60


class _DiesOnSecondBatch(FakeSession):
    def _run(self, batch):
        if self.calls:
            raise RuntimeError("engine died")
        return super()._run(batch)


def test_failed_run_leaves_an_existing_folders_images_as_they_were(demo, tmp_path):
    """--save-images into a folder holding an earlier run's copies: a run that dies after its
    first batch changes none of them and adds none; a run that succeeds replaces them."""
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    earlier = out / "images" / demo[0].path.name
    earlier.write_bytes(b"an earlier run's copy")

    with pytest.raises(RuntimeError, match="engine died"):
        infer(_DiesOnSecondBatch(fake_meta()), demo[:6], out, save_images=True, progress=False)
    assert [p.name for p in (out / "images").iterdir()] == [earlier.name]
    assert earlier.read_bytes() == b"an earlier run's copy"
    assert sorted(p.name for p in out.iterdir()) == ["images"]  # no staging folder left

    infer(FakeSession(fake_meta()), demo[:6], out, save_images=True, progress=False)
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(
        s.path.name for s in demo[:6])
    with Image.open(earlier) as im:
        im.load()  # replaced by a real annotated copy
    assert not any(p.name.startswith(".images") for p in out.iterdir())


def test_labels_out_of_model_range(demo, tmp_path):
    with pytest.raises(DataError, match="has label .* but the model has 10 classes"):
        infer(FakeSession(fake_meta(num_classes=10)), demo, tmp_path, progress=False)


def test_names_keep_subfolders_and_stay_inside(tmp_path, demo):
    for cls in ("a", "b"):
        (tmp_path / "tree" / cls).mkdir(parents=True)
        (tmp_path / "tree" / cls / "x.JPEG").write_bytes(demo[0].path.read_bytes())
    samples = [Sample(tmp_path / "tree" / c / "x.JPEG", i) for i, c in enumerate("ab")]
    infer(FakeSession(fake_meta()), samples, tmp_path / "out", save_images=True, progress=False)
    assert _read(tmp_path / "out" / "eval_labels.txt") == ["a/x.JPEG 0", "b/x.JPEG 1"]
    assert (tmp_path / "out" / "images" / "b" / "x.JPEG").is_file()


# ---------------------------------------------------------------- through a real built model
@pytest.fixture(scope="module")
def built(tiny_model, tmp_path_factory):
    """A built model with 1000 outputs (so ImageNet labels are in range), its torch source."""
    import mnv3

    tiny = tiny_model(dynamic=True, export_batch=2, images=0, classes=1000)
    d = tmp_path_factory.mktemp("built")
    mnv3.build(tiny.onnx, d / "model", quant_mode="force_float32", shape_mutable=False,
               batch_size=4, preprocess=CFG, options={"fidelity_num": 4, "progress": False})
    return d / "model", tiny.module


def test_cli_infer_on_demo_with_a_built_model_then_eval(built, demo, tmp_path, capsys):
    import torch

    from mnv3.cli.main import main

    model_dir, net = built
    out = tmp_path / "out"
    assert main(["infer", "--model", str(model_dir), "--output-dir", str(out),
                 "--json", str(tmp_path / "s.json"), "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "bundled demo set" in printed and "images/s end to end" in printed
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["processed"] == len(demo)

    # the engine's top-1 equals PyTorch eager's on the same preprocessing, image by image
    x = preprocess_batch([s.path for s in demo], CFG)
    with torch.no_grad():
        eager = net(torch.from_numpy(x)).numpy()
    got = [int(line.split()[1]) for line in _read(out / "eval_result_1.txt")]
    assert got == eager.argmax(axis=1).tolist()

    assert main(["eval", "--result-label-file", str(out / "eval_labels.txt"),
                 "--result-1-file", str(out / "eval_result_1.txt"),
                 "--result-5-file", str(out / "eval_result_5.txt")]) == 0
    assert capsys.readouterr().out.splitlines() == _read(out / "eval_result.txt")


def test_cli_infer_strict_and_errors(built, demo, tmp_path, capsys):
    from mnv3.cli.main import main

    model_dir, _ = built
    data = tmp_path / "data"
    data.mkdir()
    for s in demo[:3]:
        (data / s.path.name).write_bytes(s.path.read_bytes())
    (data / "zero.JPEG").write_bytes(b"")
    args = ["infer", "--model", str(model_dir), "--image-dir", str(data),
            "--output-dir", str(tmp_path / "o")]
    assert main(args) == 0  # unlabeled folder: predictions only, the bad file skipped
    printed = capsys.readouterr().out
    assert "1 skipped" in printed and "zero.JPEG" in printed
    assert main(args + ["--image-num", "2"]) == 0
    assert len(_read(tmp_path / "o" / "eval_result_1.txt")) == 2
    capsys.readouterr()
    assert main(args + ["--strict"]) == 3
    assert "zero.JPEG" in capsys.readouterr().err
    assert main(args + ["--label-file", str(tmp_path / "nope.txt")]) == 3
    assert main(["infer", "--model", str(model_dir), "--demo", "--image-dir", str(data),
                 "--output-dir", str(tmp_path / "o")]) == 2
    assert main(["infer", "--model", str(model_dir), "--dataset", str(data),
                 "--output-dir", str(tmp_path / "o")]) == 3  # no images/ inside
    assert "expected a folder holding images/" in capsys.readouterr().err


def test_cli_dataset_folder_and_demo_name(built, demo, tmp_path):
    from mnv3.cli.main import main

    model_dir, _ = built
    for i, ds in enumerate((str(demo_dir()), "demo")):
        out = tmp_path / f"o{i}"
        assert main(["infer", "--model", str(model_dir), "--dataset", ds, "--image-num", "4",
                     "--output-dir", str(out)]) == 0
        assert _read(out / "eval_labels.txt") == [f"{s.path.name} {s.label}" for s in demo[:4]]


def test_a_model_folder_without_settings_runs_batches_side_by_side(built, demo, tmp_path,
                                                                    monkeypatch):
    """No threads given and none tuned: UNTUNED_IN_FLIGHT batches in the engine at once, on
    the usable cores shared out; the same files as one batch at a time. Given threads, or a
    single core, one batch at a time."""
    import mnv3.backends
    import mnv3.data.loader
    from mnv3.inference import UNTUNED_IN_FLIGHT, open_for_infer

    model_dir, _ = built
    calls = []
    real_load = mnv3.backends.load

    def spy(model, threads=None, **options):
        calls.append((threads, options.get("streams")))
        return real_load(model, threads=threads, **options)

    monkeypatch.setattr(mnv3.backends, "load", spy)
    monkeypatch.setattr(mnv3.data.loader, "default_workers", lambda: 4)
    with open_for_infer(model_dir) as s:
        assert s.in_flight == UNTUNED_IN_FLIGHT == 2 and calls[-1] == (2, 2)
    with open_for_infer(model_dir, threads=3) as s:
        assert s.in_flight == 1 and calls[-1] == (3, None)
    monkeypatch.setattr(mnv3.data.loader, "default_workers", lambda: 1)
    with open_for_infer(model_dir) as s:
        assert s.in_flight == 1 and calls[-1] == (None, None)

    monkeypatch.setattr(mnv3.data.loader, "default_workers", lambda: 2)
    a = infer(model_dir, demo, tmp_path / "a", progress=False)  # a folder: 2 x 1 thread
    assert calls[-1] == (1, 2)
    with real_load(model_dir, threads=1) as one:
        b = infer(one, demo, tmp_path / "b", progress=False)
    assert a.processed == b.processed == len(demo)
    for name in ("eval_result_1.txt", "eval_result_5.txt", "results.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
