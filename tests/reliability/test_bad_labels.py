"""Bad label files through ``mnv3 infer --image-dir D --label-file F``.

Every case fails before any result file exists (the dataset is read before the output folder is
made), with exit 3 and a message naming the file and line. Names in a label file can never
reach outside the image folder.
"""

from __future__ import annotations

import shutil

import pytest

from .helpers import assert_user_error

GOOD = ["img_000.png 0", "img_001.png 1", "img_002.png 2", "img_003.png 3", "img_004.png 4",
        "img_005.png 5"]

# case -> (label file bytes (None = no file), regex: what was wrong, regex: what to do)
CASES = {
    "missing_file": (None, r"label file \S+ does not exist", r"check the path"),
    "empty": (b"", r"label file \S+labels.txt has no .filename class_index. lines", r"fill it in"),
    "not_utf8": ("\n".join(GOOD).encode() + b"\nimg_\xff\xfe.png 1\n",
                 r"labels.txt is not UTF-8", r"save it as UTF-8"),
    "one_field": ("\n".join(GOOD[:5] + ["img_005.png"]).encode(),
                  r"labels.txt:6: cannot parse 'img_005.png'", r"expected 'filename class_index'"),
    "negative_index": ("\n".join(GOOD[:5] + ["img_005.png -1"]).encode(),
                       r"labels.txt:6: class index -1 is out of range", r"expected 0..9"),
    "index_out_of_range": ("\n".join(GOOD[:5] + ["img_005.png 10"]).encode(),
                           r"labels.txt:6: class index 10 is out of range", r"expected 0..9"),
    "not_a_number": ("\n".join(GOOD[:5] + ["img_005.png cat"]).encode(),
                     r"labels.txt:6: label 'cat' is neither", r"class index|wnid"),
    "wnid_without_synsets": ("\n".join(GOOD[:5] + ["img_005.png n01440764"]).encode(),
                             r"labels.txt:6: label n01440764 is a wnid", r"pass the synsets"),
    "duplicate_name": ("\n".join(GOOD + ["img_002.png 7"]).encode(),
                       r"labels.txt:7: img_002.png is already labelled on line 3",
                       r"remove one of the lines"),
    "image_does_not_exist": ("\n".join(GOOD + ["ghost.png 1"]).encode(),
                             r"labels.txt:7: label for ghost.png but there is no such image",
                             r"remove the line|add the image"),
    "path_traversal": ("\n".join(GOOD + ["../../etc/x.JPEG 1"]).encode(),
                       r"labels.txt:7: file name '../../etc/x.JPEG' points outside the image folder",
                       r"names must be relative"),
    "absolute_path": ("\n".join(GOOD + ["/etc/passwd 1"]).encode(),
                      r"labels.txt:7: file name '/etc/passwd' points outside", r"must be relative"),
}


@pytest.fixture
def image_dir(tiny, tmp_path):
    d = tmp_path / "images"
    shutil.copytree(tiny["images"], d)
    return d


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_label_file(cli, tiny, image_dir, tmp_path, case):
    content, what, do = CASES[case]
    labels = tmp_path / "labels.txt"
    if content is not None:
        labels.write_bytes(content)
    out = tmp_path / "out"
    res = cli("infer", "--model", tiny["model"], "--image-dir", image_dir, "--label-file", labels,
              "--output-dir", out, "--no-progress")
    assert_user_error(res, 3, what, do)
    assert not out.exists()


def test_good_label_file_is_accepted(cli, tiny, image_dir, tmp_path):
    """The control case: the same folder with a correct label file runs and scores."""
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(GOOD) + "\n")
    out = tmp_path / "out"
    res = cli("infer", "--model", tiny["model"], "--image-dir", image_dir, "--label-file", labels,
              "--output-dir", out, "--no-progress")
    assert res.code == 0, res.err
    assert (out / "eval_result.txt").read_text().startswith("top1 accuracy:")


def test_traversal_with_a_real_target_is_refused(cli, tiny, image_dir, tmp_path):
    """Even when ``../secret.png`` exists (a real image beside the folder), it is refused."""
    shutil.copy(image_dir / "img_000.png", tmp_path / "secret.png")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(GOOD + ["../secret.png 1"]) + "\n")
    res = cli("infer", "--model", tiny["model"], "--image-dir", image_dir, "--label-file", labels,
              "--output-dir", tmp_path / "out", "--no-progress")
    assert_user_error(res, 3, r"'../secret.png' points outside the image folder", r"relative")
    assert not (tmp_path / "out").exists()


def test_dataset_root_as_image_dir_is_refused(cli, tiny, tmp_path):
    """Issue 13: a dataset root (images/ + labels.txt) given to --image-dir was one class
    'images', every label 0, labels.txt ignored, accuracy 0 without a word."""
    root = tmp_path / "sample"
    shutil.copytree(tiny["images"], root / "images")
    (root / "labels.txt").write_text("".join(f"{p.name} 1\n" for p in tiny["images"].iterdir()))
    res = cli("infer", "--model", tiny["model"], "--image-dir", root, "--output-dir",
              tmp_path / "out")
    assert_user_error(res, 3, r"sample holds images/ and labels\.txt, a dataset folder",
                      r"pass --dataset \S+sample")
    assert not (tmp_path / "out").exists()
    res = cli("infer", "--model", tiny["model"], "--dataset", root, "--output-dir",
              tmp_path / "out", "--no-progress")
    assert res.code == 0 and "top1 accuracy" in res.out


def test_one_class_image_folder_warns_on_one_line(cli, tiny, tmp_path):
    shutil.copytree(tiny["images"], tmp_path / "root" / "images")
    res = cli("infer", "--model", tiny["model"], "--image-dir", tmp_path / "root",
              "--output-dir", tmp_path / "out", "--no-progress")
    assert res.code == 0, res.err
    warning = [ln for ln in res.err.splitlines() if "warning" in ln]
    assert len(warning) == 1 and warning[0].startswith(
        "mnv3 infer: warning: ") and "one class, 'images'" in warning[0], res.err
