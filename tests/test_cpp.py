"""mnv3-infer-cpp (cpp/): built with `mnv3 build-cpp`, checked against the Python pipeline.

The program must see the tensor Python builds (bit for bit, from the same files), write the same
result files as ``mnv3.infer``, and fail like it: one line, mnv3's exit codes, nothing partial.
Skips with the reason where it cannot be built (no OpenVINO, no compiler or image libraries);
CI sets MNV3_REQUIRE_CPP=1, which turns those skips into failures.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from image_corpus import decode_corpus
from PIL import Image

from mnv3.meta import PreprocessCfg

PP = PreprocessCfg(resize=36, crop=32)


@pytest.fixture(scope="session")
def binary(cpp_build) -> Path:
    return cpp_build


@pytest.fixture(scope="module")
def models(tiny_model, tmp_path_factory):
    """{name: model dir}: the tiny classifier built for OpenVINO (fixed batch 4, mutable) and ORT."""
    pytest.importorskip("openvino")
    from mnv3.builder import build

    root = tmp_path_factory.mktemp("cpp")
    tiny = tiny_model(dynamic=True, export_batch=2, images=4)
    out = {}
    for name, backend, mutable, batch in (("fixed4", "openvino", False, 4),
                                          ("mutable", "openvino", True, 1),
                                          ("ort", "onnxruntime", False, 4)):
        out[name] = root / name
        build(tiny.onnx, out[name], quant_mode="force_float32", shape_mutable=mutable,
              batch_size=batch, preprocess=PP, calib_dir=tiny.images, backend=backend,
              options={"progress": False})
    return out


def _variant(model: Path, dest: Path, **preprocess) -> Path:
    """A copy of ``model`` whose meta.json asks for other preprocessing (meta.json is not hashed)."""
    shutil.copytree(model, dest, ignore=shutil.ignore_patterns(".ov_cache"))
    meta = json.loads((dest / "meta.json").read_text())
    meta["preprocess"].update(preprocess)
    (dest / "meta.json").write_text(json.dumps(meta))
    return dest


def _run(binary, *args, check=True):
    proc = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


@pytest.mark.slow  # the binary and the models fixture: about a minute on 2 vCPUs
@pytest.mark.parametrize("variant", [{}, {"interpolation": "bicubic", "channel_order": "BGR",
                                          "resize": 45, "mean": [0.498] * 3, "std": [0.502] * 3}])
def test_tensors_are_bit_identical_to_python_preprocessing(binary, models, tmp_path, variant):
    from mnv3.data.preprocess import preprocess_image
    from mnv3.meta import read_meta

    model = _variant(models["mutable"], tmp_path / "m", **variant) if variant else models["mutable"]
    cfg = read_meta(model).preprocess
    paths = sorted(decode_corpus(tmp_path / "img"), key=str)
    _run(binary, "--model", model, "--image-dir", tmp_path / "img", "--output-dir",
         tmp_path / "out", "--dump-tensors", tmp_path / "dump", "--quiet")
    for i, p in enumerate(paths):
        ours = np.fromfile(tmp_path / "dump" / f"{i}.f32", dtype=np.float32).reshape(3, 32, 32)
        ref = preprocess_image(p, cfg)
        assert np.array_equal(ours, ref), f"{p.name}: max |diff| {np.abs(ours - ref).max()}"


@pytest.mark.slow
def test_result_files_match_mnv3_infer_on_the_demo_set(binary, models, tmp_path):
    from mnv3.cpp_engine import CppModel, infer_cpp
    from mnv3.data.datasets import Sample, demo_dataset
    from mnv3.inference import infer

    samples = [Sample(s.path, s.label % 10) for s in demo_dataset()]  # the tiny net has 10 classes
    py = infer(str(models["fixed4"]), samples, tmp_path / "py", progress=False)
    cpp = infer_cpp(CppModel(models["fixed4"], binary=binary), samples, tmp_path / "cpp")
    for name in ("eval_labels.txt", "eval_result_1.txt", "eval_result_5.txt", "eval_result.txt"):
        assert (tmp_path / "py" / name).read_bytes() == (tmp_path / "cpp" / name).read_bytes(), name
    rows = [[json.loads(line) for line in (tmp_path / d / "results.jsonl").read_text().splitlines()]
            for d in ("py", "cpp")]
    for a, b in zip(*rows, strict=True):
        assert {k: a[k] for k in ("file", "label", "top5", "names")} == \
               {k: b[k] for k in ("file", "label", "top5", "names")}
        assert np.allclose(a["probs"], b["probs"], atol=2e-6)
    assert (cpp.processed, cpp.top1, cpp.top5) == (py.processed, py.top1, py.top5)
    assert cpp.images_per_s > 0 and cpp.engine_seconds > 0


@pytest.mark.slow
def test_mutable_model_and_image_num_and_plain_folder(binary, models, tmp_path):
    from tiny_onnx import write_images

    write_images(tmp_path / "img", 7)
    _run(binary, "--model", models["mutable"], "--image-dir", tmp_path / "img", "--output-dir",
         tmp_path / "out", "--batch-size", 3, "--image-num", 5, "--json", tmp_path / "s.json",
         "--quiet", "--profile")
    s = json.loads((tmp_path / "s.json").read_text())
    assert (s["images"], s["processed"], s["labeled"], s["top1"]) == (5, 5, 0, None)
    prof = s["profile"]  # --profile: where the time went, per stage
    assert prof["images"] == 5 and prof["cpu_ms_per_image"]["decode"] > 0
    assert set(prof["cpu_ms_per_image"]) >= {"read", "decode", "resize_crop", "normalize"}
    assert len((tmp_path / "out" / "eval_result_5.txt").read_text().splitlines()) == 25
    assert not (tmp_path / "out" / "eval_result.txt").exists()  # no labels: no accuracy


@pytest.mark.slow
def test_bad_images_are_skipped_and_listed_or_fatal_with_strict(binary, models, tmp_path):
    from tiny_onnx import write_images

    write_images(tmp_path / "img", 5)
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    good = (tmp_path / "img" / "img_000.png").read_bytes()
    (tmp_path / "img" / "cut.jpg").write_bytes(b"")  # empty
    Image.open(tmp_path / "img" / "img_001.png").save(tmp_path / "t.jpg")
    (tmp_path / "img" / "truncated.jpg").write_bytes((tmp_path / "t.jpg").read_bytes()[:300])
    (tmp_path / "img" / "text.png").write_text("hello")
    assert good
    proc = _run(binary, "--model", models["fixed4"], "--image-dir", tmp_path / "img",
                "--output-dir", tmp_path / "out")
    skipped = (tmp_path / "out" / "skipped.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in skipped) == \
           ["broken.png", "cut.jpg", "text.png", "truncated.jpg"]
    assert all("replace or remove the file" in line for line in skipped)
    assert "5 predicted, 4 skipped" in proc.stdout
    assert len((tmp_path / "out" / "eval_result_1.txt").read_text().splitlines()) == 5
    strict = _run(binary, "--model", models["fixed4"], "--image-dir", tmp_path / "img",
                  "--output-dir", tmp_path / "new" / "out", "--strict", check=False)
    assert strict.returncode == 3 and "--strict" in strict.stderr
    assert len(strict.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()  # the folders it created are gone


@pytest.mark.slow
def test_jpeg_truncated_below_the_crop_is_skipped_as_python_skips_it(binary, models, tmp_path):
    """The program decodes only the rows the crop reads, but still entropy-decodes the rest:
    a JPEG cut off in rows the crop never reads is refused, as Pillow refuses it."""
    from mnv3.data.preprocess import preprocess_image
    from mnv3.errors import DataError
    from mnv3.meta import read_meta

    src = next(p for p in decode_corpus(tmp_path / "src") if p.name == "big_420.jpg")
    data = src.read_bytes()
    (tmp_path / "img").mkdir()
    for keep in (0.97, 0.9, 0.6):
        (tmp_path / "img" / f"cut_{keep}.jpg").write_bytes(data[:int(len(data) * keep)])
    shutil.copy(src, tmp_path / "img" / "whole.jpg")
    cfg = read_meta(models["mutable"]).preprocess
    for p in (tmp_path / "img").glob("cut_*"):
        with pytest.raises(DataError):
            preprocess_image(p, cfg)
    _run(binary, "--model", models["mutable"], "--image-dir", tmp_path / "img", "--output-dir",
         tmp_path / "out", "--quiet")
    skipped = sorted(ln.split("\t")[0] for ln in
                     (tmp_path / "out" / "skipped.txt").read_text().splitlines())
    assert skipped == ["cut_0.6.jpg", "cut_0.9.jpg", "cut_0.97.jpg"]
    assert all("truncated" in ln for ln in (tmp_path / "out" / "skipped.txt").read_text()
               .splitlines())


@pytest.mark.slow
def test_reliability_bad_files_are_handled_like_python(binary, models, tmp_path):
    """The reliability suite's bad images: the program skips what Python skips, plus WebP
    (it decodes only JPEG and PNG), and builds Python's tensor for every other one."""
    from reliability.badfiles import IMAGE_CASES

    from mnv3.data.loader import iter_batches
    from mnv3.data.preprocess import preprocess_image
    from mnv3.data.datasets import load_dataset
    from mnv3.meta import read_meta

    (tmp_path / "img").mkdir()
    for name, (maker, _) in IMAGE_CASES.items():
        maker(tmp_path / "img" / name)
    samples = load_dataset(tmp_path / "img")
    cfg = read_meta(models["mutable"]).preprocess
    loader = iter_batches(samples, cfg, 4, workers=1)
    for _ in loader:
        pass
    py_skipped = {Path(s.path).name for s, _ in loader.skipped}
    _run(binary, "--model", models["mutable"], "--image-dir", tmp_path / "img", "--output-dir",
         tmp_path / "out", "--dump-tensors", tmp_path / "dump", "--quiet")
    lines = (tmp_path / "out" / "skipped.txt").read_text().splitlines()
    cpp_skipped = {line.split("\t")[0] for line in lines}
    assert cpp_skipped == py_skipped | {"webp_named.JPEG"}
    for i, s in enumerate(samples):
        if Path(s.path).name not in cpp_skipped:
            ours = np.fromfile(tmp_path / "dump" / f"{i}.f32", dtype=np.float32).reshape(3, 32, 32)
            assert np.array_equal(ours, preprocess_image(s.path, cfg)), s.path


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["xml", "bin", "backend", "missing", "meta"])
def test_wrong_or_tampered_model_is_one_line_and_exit_7(binary, models, tmp_path, damage):
    from tiny_onnx import write_images

    write_images(tmp_path / "img", 2)
    model = tmp_path / "model"
    if damage == "backend":
        model = models["ort"]
    elif damage != "missing":
        shutil.copytree(models["fixed4"], model, ignore=shutil.ignore_patterns(".ov_cache"))
        if damage == "meta":
            (model / "meta.json").write_text("{not json")
        else:
            with open(model / f"model.{damage}", "ab") as f:
                f.write(b" ")
    proc = _run(binary, "--model", model, "--image-dir", tmp_path / "img", "--output-dir",
                tmp_path / "out", check=False)
    assert proc.returncode == 7, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    expected = {"xml": "sha256", "bin": "sha256", "backend": "--backend openvino",
                "missing": "does not exist", "meta": "meta.json"}[damage]
    assert expected in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("args, needle", [
    (["--batch-size", "0"], "at least 1"),
    (["--batch-size", "3"], "fixed batch of 4"),
    (["--frobnicate", "1"], "unknown flag"),
    (["--threads", "two"], "whole number"),
    (["--threads", "1", "--streams", "2"], "at least as many --threads"),
    (["--bench", "0"], "positive number of seconds"),
])
def test_bad_flags_are_usage_errors(binary, models, tmp_path, args, needle):
    proc = _run(binary, "--model", models["fixed4"], "--image-dir", tmp_path, "--output-dir",
                tmp_path / "out", *args, check=False)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_bench_mode_measures_the_engine_alone(binary, models, tmp_path):
    """--bench: no images needed; every query's latency, the split of threads into streams."""
    proc = _run(binary, "--model", models["fixed4"], "--bench", "0.2", "--warmup", "1",
                "--threads", "2", "--json", "-")
    d = json.loads(proc.stdout)
    assert (d["batch_size"], d["threads"], d["streams"], d["warmup"]) == (4, 2, 2, 1)
    assert d["latencies_s"] and all(v > 0 for v in d["latencies_s"])
    assert d["wall_s"] >= 0.2 and d["first_run_ms"] > 0 and d["load_ms"] > 0
    text = _run(binary, "--model", models["fixed4"], "--bench", "0.1", "--streams", "1").stdout
    assert "images/s" in text and "p99" in text


@pytest.mark.slow
def test_seed_spellings_and_save_images(binary, models, tmp_path):
    from tiny_onnx import write_images

    write_images(tmp_path / "img", 3)
    (tmp_path / "labels.txt").write_text("".join(f"img_{i:03d}.png {i}\n" for i in range(3)))
    _run(binary, "--model", models["fixed4"], "--image_dir", tmp_path / "img", "--label_file",
         tmp_path / "labels.txt", "--output_dir", tmp_path / "out", "--save-images")
    saved = sorted(p.name for p in (tmp_path / "out" / "images").iterdir())
    assert saved == ["img_000.png", "img_001.png", "img_002.png"]
    copy = np.asarray(Image.open(tmp_path / "out" / "images" / "img_000.png").convert("RGB"))
    assert (copy[0, 0] == 0).all() and (copy == [255, 255, 0]).all(axis=2).any()  # box + text
    assert (tmp_path / "out" / "eval_result.txt").read_text().startswith("top1 accuracy: ")
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left


@pytest.mark.slow
def test_mnv3_infer_engine_cpp_cli(binary, models, tmp_path, monkeypatch):
    from mnv3.cli.main import main

    from tiny_onnx import write_images

    monkeypatch.setenv("MNV3_INFER_CPP", str(binary))
    write_images(tmp_path / "img", 9)
    (tmp_path / "labels.txt").write_text("".join(f"img_{i:03d}.png {i % 10}\n" for i in range(9)))
    out = tmp_path / "out"
    assert main(["infer", "--engine", "cpp", "--model", str(models["fixed4"]), "--image-dir",
                 str(tmp_path / "img"), "--label-file", str(tmp_path / "labels.txt"),
                 "--output-dir", str(out), "--image-num", "6"]) == 0
    assert len((out / "eval_result_1.txt").read_text().splitlines()) == 6
    assert (out / "eval_result.txt").is_file()
    assert main(["infer", "--engine", "cpp", "--model", str(models["ort"]),
                 "--output-dir", str(tmp_path / "o2")]) == 7


@pytest.mark.slow
def test_hostile_folder_fifo_and_undecodable_names_as_python(binary, models, tmp_path,
                                                             monkeypatch):
    """Issue 19 in the native program: a FIFO named like an image is skipped with Python's
    reason (it blocked the program), a Latin-1 file name is read and named \\xNN in every
    result file, as mnv3 infer names it, and a label file may use that name."""
    import os

    from mnv3.cli.main import main
    from tiny_onnx import write_images

    monkeypatch.setenv("MNV3_INFER_CPP", str(binary))
    img = tmp_path / "img"
    first = write_images(img, 4)[0]
    os.link(first, os.fsencode(img) + b"/caf\xe9.png")  # not valid UTF-8
    os.mkfifo(img / "zz_fifo.png")
    labels = tmp_path / "labels.txt"
    labels.write_text("caf\\xe9.png 3\n" + "".join(f"img_{i:03d}.png {i}\n" for i in range(4)))
    for engine in ("python", "cpp"):
        assert main(["infer", "--engine", engine, "--model", str(models["fixed4"]),
                     "--image-dir", str(img), "--output-dir", str(tmp_path / engine),
                     "--no-progress"]) == 0
    for name in ("eval_result_1.txt", "eval_result_5.txt", "results.jsonl", "skipped.txt"):
        assert (tmp_path / "cpp" / name).read_bytes() == (tmp_path / "python" / name).read_bytes()
    assert "caf\\xe9.png" in (tmp_path / "cpp" / "eval_result_1.txt").read_text()
    assert "FIFO" in (tmp_path / "cpp" / "skipped.txt").read_text()
    # the program on its own, with a label file naming the file as the result files do
    (img / "zz_fifo.png").unlink()  # unlabelled: an error with a label file, as in Python
    _run(binary, "--model", models["fixed4"], "--image-dir", img, "--label-file", labels,
         "--output-dir", tmp_path / "alone", "--quiet")
    assert "caf\\xe9.png" in (tmp_path / "alone" / "eval_labels.txt").read_text()


@pytest.mark.slow
def test_mnv3_run_cpp_adds_an_openvino_cpp_row(binary, tmp_path, monkeypatch):
    import mnv3.bench
    import mnv3.cpp_run
    from mnv3.pipeline import run_all
    from mnv3.report import BASELINE_ORT, BASELINE_TORCH, accuracy_table, performance_table

    monkeypatch.setenv("MNV3_INFER_CPP", str(binary))
    ran = []  # which row each bench round measured, in order
    for module, name, label in ((mnv3.bench, "benchmark", lambda kw: kw["label"]),
                                (mnv3.cpp_run, "bench_cpp", lambda kw: "C++")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, _label=label, **kw:
                            ran.append(_label(kw)) or _real(*a, **kw))
    rep = run_all(width_mult=0.35, image_num=4, quant_modes=("force_float32",), batch_sizes=(2,),
                  threads=1, bench_duration=0.05, bench_rounds=2, bench_warmup=1,
                  progress=False, backends=("openvino",), cpp=True, out=tmp_path)
    # the C++ row's rounds take turns with the others' (drift falls on every row alike)
    ov, torch_, ort = "openvino/force_float32_false_2", BASELINE_TORCH, BASELINE_ORT
    assert ran[-8:] == [ov, "C++", torch_, ort, "C++", torch_, ort, ov]
    ov_row, cpp_row = rep.rows
    assert (ov_row.backend, cpp_row.backend) == ("openvino", "openvino C++")
    assert cpp_row.accuracy["top1"] == ov_row.accuracy["top1"]
    assert cpp_row.accuracy["agreement"] == ov_row.accuracy["agreement"]
    assert cpp_row.accuracy["end_to_end_images_per_s"] > 0
    # the performance cells: the program's own --bench, statistics as mnv3 bench computes them
    b = cpp_row.bench
    assert b is not None and b.throughput_ips > 0 and len(b.rounds_ips) == 2
    assert "interleaved" in cpp_row.notes[0]
    assert b.latency_ms.min <= b.latency_ms.p50 <= b.latency_ms.p99 <= b.latency_ms.max
    assert (b.batch, b.threads * b.streams) == (2, 1)
    assert "| openvino C++ |" in accuracy_table(rep)
    perf = [ln for ln in performance_table(rep).splitlines() if "openvino C++" in ln]
    assert perf and "n/a" not in perf[0]
    assert (tmp_path / "results" / "cpp" / cpp_row.name / "eval_result_1.txt").is_file()


def test_cached_binary_is_keyed_by_the_openvino_install_it_links(monkeypatch):
    """A binary linked against another virtual environment's libopenvino must not be reused."""
    openvino = pytest.importorskip("openvino")
    from mnv3 import cpp_engine

    here = cpp_engine._key()
    monkeypatch.setattr(openvino, "__file__", "/elsewhere/site-packages/openvino/__init__.py")
    assert cpp_engine._key() != here
