"""Flags that do not make sense: exit 2 (usage) with the flag named and the accepted values,
before any work; and a --json that cannot be written, which must not hide finished work."""

from __future__ import annotations

import pytest
from PIL import Image

from ckpt_factory import write_checkpoint

from .helpers import PRE_FLAGS, assert_user_error, build_argv


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    p = tmp_path_factory.mktemp("w") / "w.pth"
    write_checkpoint(p, width_mult=0.35, num_classes=10)
    return p


def _infer(tiny, out, *extra):
    return ["infer", "--model", tiny["model"], "--image-dir", tiny["images"], "--output-dir",
            out, "--no-progress", *extra]


# case -> (argv(tiny, weights, tmp_path), regex what, regex do)
CASES = {
    "infer_batch_size_0": (lambda t, w, d: _infer(t, d / "o", "--batch-size", "0"),
                           r"--batch-size must be at least 1, got 0", r"at least 1"),
    "infer_threads_negative": (lambda t, w, d: _infer(t, d / "o", "--threads", "-1"),
                               r"--threads must be at least 1, got -1", r"at least 1"),
    "infer_image_num_0": (lambda t, w, d: _infer(t, d / "o", "--image-num", "0"),
                          r"--image-num must be at least 1, got 0", r"at least 1"),
    "infer_workers_0": (lambda t, w, d: _infer(t, d / "o", "--workers", "0"),
                        r"workers must be at least 1, got 0", r"at least 1"),
    "infer_label_file_without_image_dir": (
        lambda t, w, d: ["infer", "--model", t["model"], "--label-file", d / "l.txt",
                         "--output-dir", d / "o"], r"--label-file needs --image-dir", r"--image-dir"),
    "bench_iterations_0": (lambda t, w, d: ["bench", "--model", t["model"], "--iterations", "0"],
                           r"--iterations must be at least 1", r"at least 1"),
    "bench_streams_0": (lambda t, w, d: ["bench", "--model", t["model"], "--streams", "0"],
                        r"--streams must be at least 1", r"at least 1"),
    "bench_duration_negative": (lambda t, w, d: ["bench", "--model", t["model"], "--duration", "-1"],
                                r"--duration must be a positive number", r"seconds"),
    "export_opset_12": (lambda t, w, d: ["export", "--weights", w, "--output", d / "m.onnx",
                                         "--opset", "12"], r"opset must be >= 17 .*got 12", r">= 17"),
    "export_image_size_0": (lambda t, w, d: ["export", "--weights", w, "--output", d / "m.onnx",
                                             "--image-size", "0"],
                            r"image size must be >= 32 pixels, got 0", r">= 32"),
    "build_unknown_quant_mode": (lambda t, w, d: build_argv(t, d / "m", "int4"),
                                 r"unknown quant mode 'int4'", r"choose one of force_float32"),
    "build_bf16_on_onnxruntime": (lambda t, w, d: build_argv(t, d / "m", "force_bfloat16"),
                                  # every engine that builds it is named (torch too, if registered)
                                  r"force_bfloat16 is built only by the openvino( and torch)? "
                                  r"backends?, not onnxruntime",
                                  r"add --backend openvino"),
    "build_calib_num_0": (lambda t, w, d: build_argv(t, d / "m", "qint8_mixed_float32",
                                                     "--calib-num", "0"),
                          r"--calib-num must be >= 1, got 0", r">= 1"),
    "build_crop_not_model_size": (lambda t, w, d: build_argv(t, d / "m") + ["--crop", "48", "--resize", "55"],
                                  r"takes 32x32 images but preprocessing crops 48", r"pass --crop 32"),
    "build_mean_two_values": (lambda t, w, d: build_argv(t, d / "m") + ["--mean", "0.5,0.5"],
                              r"mean and std need 3 values each", r"3 values"),
    "build_onnx_missing": (lambda t, w, d: ["build", "--onnx", d / "nope.onnx", "--quant-mode",
                                            "force_float32", "--shape-mutable", "false",
                                            "--batch-size", "1", *PRE_FLAGS, "--output", d / "m"],
                           r"ONNX model \S+nope.onnx does not exist",
                           r"check the path \('mnv3 export --weights CKPT"),
    "build_output_is_a_user_folder": (lambda t, w, d: build_argv(t, d / "mine"),
                                      r"non-empty directory without meta.json", r"choose another --output"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_flag(cli, tiny, weights, tmp_path, case):
    make_argv, what, do = CASES[case]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    res = cli(*make_argv(tiny, weights, tmp_path))
    assert_user_error(res, 2, what, do)
    assert not (tmp_path / "o").exists() and not (tmp_path / "m").exists()
    assert not (tmp_path / "m.onnx").exists()
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize("command", ["infer", "build"])
def test_json_to_unwritable_path(cli, tiny, tmp_path, command):
    """The work is done and kept; the error says only the --json copy failed."""
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    target = blocker / "summary.json"  # a file where a folder should be: fails even for root
    out = tmp_path / ("o" if command == "infer" else "m")
    argv = _infer(tiny, out) if command == "infer" else build_argv(tiny, out)
    res = cli(*argv, "--json", target)
    assert_user_error(res, 2, r"cannot write --json \S+afile/summary.json", r"choose a writable path")
    assert (out / "results.jsonl").is_file() if command == "infer" else (out / "meta.json").is_file()


@pytest.mark.parametrize("which", ["labels", "top1", "top5"])
def test_eval_missing_result_file(cli, tiny, tmp_path, which):
    out = tmp_path / "o"
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"img_{i:03d}.png {i}\n" for i in range(6)))
    assert cli(*_infer(tiny, out, "--label-file", labels)).code == 0
    files = {"labels": out / "eval_labels.txt", "top1": out / "eval_result_1.txt",
             "top5": out / "eval_result_5.txt"}
    files[which] = tmp_path / "missing.txt"
    res = cli("eval", "--result-label-file", files["labels"], "--result-1-file", files["top1"],
              "--result-5-file", files["top5"], "--top1andtop5-file", tmp_path / "acc.txt")
    assert_user_error(res, 3, r"missing.txt does not exist", r"pass the files 'mnv3 infer' wrote")
    assert not (tmp_path / "acc.txt").exists()


# ------------------------------------------------------------------------------- mnv3 run
def _run_cases():
    def garbage(d):
        (d / "w.pth").write_text("not weights")
        return ["--weights", d / "w.pth"]

    def traversal(d):
        (d / "imgs").mkdir()
        Image.new("RGB", (40, 40)).save(d / "imgs" / "a.png")
        (d / "labels.txt").write_text("a.png 1\n../../etc/x.JPEG 1\n")
        return ["--image-dir", d / "imgs", "--label-file", d / "labels.txt"]

    def no_images(d):
        (d / "imgs").mkdir()
        return ["--image-dir", d / "imgs"]

    return {
        "garbage_weights": (garbage, 4, r"w.pth is not a PyTorch checkpoint: it is neither",
                            r"pass a state dict saved with torch\.save"),
        "unknown_quant_mode": (lambda d: ["--quant-modes", "int4"], 2,
                               r"unknown quant mode 'int4'", r"choose one of"),
        "batch_size_0": (lambda d: ["--batch-sizes", "0"], 2,
                         r"--batch-sizes must be whole numbers >= 1", r">= 1"),
        "label_path_traversal": (traversal, 3, r"'../../etc/x.JPEG' points outside",
                                 r"must be relative"),
        "no_images": (no_images, 3, r"no images found", r"\.jpe?g"),
        "calib_num_0": (lambda d: ["--calib-num", "0", "--quant-modes", "qint8_mixed_float32"], 2,
                        r"--calib-num must be >= 1", r">= 1"),
    }


RUN_CASES = _run_cases()


@pytest.mark.parametrize("case", sorted(RUN_CASES))
def test_run_refuses_before_writing(cli, tmp_path, case):
    """``mnv3 run`` checks its whole request before the first slow step: nothing in --out."""
    make, code, what, do = RUN_CASES[case]
    out = tmp_path / "out"
    res = cli("run", "--batch-sizes", "1", *make(tmp_path), "--out", out, "--no-progress")
    assert_user_error(res, code, what, do)
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
