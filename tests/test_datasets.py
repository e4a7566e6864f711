"""Datasets: every layout, every error, and the bundled demo set."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from mnv3.data.datasets import (
    IMAGE_EXTENSIONS, Sample, demo_dataset, demo_dir, load_class_names, load_dataset, load_synsets,
)
from mnv3.errors import DataError

SYNSETS = "n01440764 tench\nn01443537 goldfish\nn01484850 great white shark\n"


def _img(path: Path, color=(200, 30, 30), size=(20, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


@pytest.fixture
def flat(tmp_path):
    """Three images in one folder plus a synsets file."""
    d = tmp_path / "imgs"
    for name in ("a.JPEG", "b.png", "c.jpg"):
        _img(d / name)
    (tmp_path / "synsets.txt").write_text(SYNSETS)
    return tmp_path


def test_label_file_with_class_indices(flat):
    (flat / "labels.txt").write_text("c.jpg 2\na.JPEG 0\n\nb.png 1\n")
    ds = load_dataset(flat / "imgs", flat / "labels.txt")
    assert [(s.path.name, s.label) for s in ds] == [("a.JPEG", 0), ("b.png", 1), ("c.jpg", 2)]
    path, label = ds[0]  # unpacks as (path, label)
    assert isinstance(path, Path) and label == 0


def test_label_file_with_wnids_maps_through_synsets(flat):
    (flat / "labels.txt").write_text("a.JPEG n01484850\nb.png n01440764\nc.jpg 1\n")
    ds = load_dataset(flat / "imgs", flat / "labels.txt", flat / "synsets.txt")
    assert [s.label for s in ds] == [2, 0, 1]


def test_image_folder_tree_sorted_names_and_wnids(tmp_path):
    for cls, n in (("n01484850", 2), ("n01440764", 1)):
        for i in range(n):
            _img(tmp_path / cls / f"{i}.jpg")
    ds = load_dataset(tmp_path)  # no synsets: rank among sorted folder names, like torchvision
    assert [(s.path.parent.name, s.label) for s in ds] == [
        ("n01440764", 0), ("n01484850", 1), ("n01484850", 1)]
    (tmp_path.parent / "syn.txt").write_text(SYNSETS)
    ds = load_dataset(tmp_path, synsets_file=tmp_path.parent / "syn.txt")
    assert [s.label for s in ds] == [0, 2, 2]


def test_unlabeled_folder_and_extensions_any_case(tmp_path):
    for ext in IMAGE_EXTENSIONS:
        _img(tmp_path / f"x{ext.upper()}")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.jpg").write_text("editor junk")
    ds = load_dataset(tmp_path)
    assert len(ds) == len(IMAGE_EXTENSIONS)
    assert all(s.label is None for s in ds)
    assert ds == sorted(ds, key=lambda s: str(s.path))


def test_no_images_lists_extensions(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"no images found.*\.jpg.*\.jpeg.*\.png.*\.bmp.*\.webp.*\.tif.*\.tiff"):
        load_dataset(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope")


@pytest.mark.parametrize("line, match", [
    ("a.JPEG", r"labels.txt:2: cannot parse"),
    ("a.JPEG cat", r"labels.txt:2: label 'cat' is neither a class index nor a wnid"),
    ("a.JPEG 3", r"labels.txt:2: class index 3 is out of range \(expected 0..2\)"),
    ("a.JPEG -1", r"labels.txt:2: class index -1 is out of range"),
    ("a.JPEG n09999999", r"labels.txt:2: wnid n09999999 is not in the synsets file"),
    ("../../etc/x.JPEG 1", r"labels.txt:2: file name '../../etc/x.JPEG' points outside"),
    ("/etc/x.JPEG 1", r"labels.txt:2: file name '/etc/x.JPEG' points outside"),
    ("zz.JPEG 1", r"labels.txt:2: label for zz.JPEG but there is no such image"),
])
def test_label_file_errors_name_file_and_line(flat, line, match):
    (flat / "labels.txt").write_text(f"b.png 1\n{line}\nc.jpg 2\na.JPEG 0\n")
    with pytest.raises(DataError, match=match):
        load_dataset(flat / "imgs", flat / "labels.txt", flat / "synsets.txt")


def test_duplicate_label_line(flat):
    (flat / "labels.txt").write_text("a.JPEG 0\nb.png 1\nc.jpg 2\na.JPEG 1\n")
    with pytest.raises(DataError, match=r"labels.txt:4: a.JPEG is already labelled on line 1"):
        load_dataset(flat / "imgs", flat / "labels.txt")


def test_image_without_label(flat):
    (flat / "labels.txt").write_text("a.JPEG 0\nb.png 1\n")
    with pytest.raises(DataError, match=r"c.jpg has no label in .*labels.txt"):
        load_dataset(flat / "imgs", flat / "labels.txt")


def test_wnid_label_needs_synsets(flat):
    (flat / "labels.txt").write_text("a.JPEG n01440764\nb.png 1\nc.jpg 2\n")
    with pytest.raises(DataError, match=r"labels.txt:1: .*pass the synsets file"):
        load_dataset(flat / "imgs", flat / "labels.txt")


def test_num_classes_bounds_indices(flat):
    (flat / "labels.txt").write_text("a.JPEG 0\nb.png 1\nc.jpg 7\n")
    assert load_dataset(flat / "imgs", flat / "labels.txt")[2].label == 7
    with pytest.raises(DataError, match=r"class index 7 is out of range \(expected 0..4\)"):
        load_dataset(flat / "imgs", flat / "labels.txt", num_classes=5)


def test_missing_and_bad_label_files(flat):
    with pytest.raises(DataError, match="label file .* does not exist"):
        load_dataset(flat / "imgs", flat / "nolabels.txt")
    (flat / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="not UTF-8"):
        load_dataset(flat / "imgs", flat / "bin.txt")


def test_image_folder_errors(tmp_path):
    _img(tmp_path / "n01440764" / "a.jpg")
    _img(tmp_path / "loose.jpg")
    with pytest.raises(DataError, match="mixes images"):
        load_dataset(tmp_path / "n01440764" / "..")
    (tmp_path / "loose.jpg").unlink()
    _img(tmp_path / "cats" / "b.jpg")
    (tmp_path.parent / "s.txt").write_text(SYNSETS)
    with pytest.raises(DataError, match="cats is not a wnid"):
        load_dataset(tmp_path, synsets_file=tmp_path.parent / "s.txt")


def test_synsets_formats_and_errors(tmp_path):
    f = tmp_path / "s.txt"
    f.write_text("n01440764 tench, Tinca tinca\nplain name\n\n")
    assert load_synsets(f) == [("n01440764", "tench, Tinca tinca"), ("", "plain name")]
    f.write_text("n01440764 tench\n\nn01443537 goldfish\n")
    with pytest.raises(DataError, match=r"s.txt:2: blank line"):
        load_class_names(f)
    f.write_text("n01440764 tench\nn01440764 again\n")
    with pytest.raises(DataError, match=r"s.txt:2: wnid n01440764 already appears on line 1"):
        load_class_names(f)


def test_symlinked_folder_inside_is_allowed(flat):
    """The path check is lexical: a folder of symlinks the user made still works."""
    link = flat / "links"
    link.mkdir()
    (link / "a.JPEG").symlink_to(flat / "imgs" / "a.JPEG")
    (flat / "l.txt").write_text("a.JPEG 1\n")
    assert load_dataset(link, flat / "l.txt")[0].label == 1


def test_symlink_loop_is_walked_once(tmp_path):
    _img(tmp_path / "cls" / "a.jpg")
    (tmp_path / "cls" / "loop").symlink_to(tmp_path / "cls")
    with pytest.warns(UserWarning, match="one class"):  # one class folder: suspicious
        ds = load_dataset(tmp_path)
    assert [s.path.name for s in ds] == ["a.jpg"]


def test_demo_set_is_bundled_real_and_labelled():
    d = demo_dir()
    ds = demo_dataset()
    assert 20 <= len(ds) <= 30
    assert all(isinstance(s, Sample) and s.label is not None for s in ds)
    assert len(load_class_names(d / "synsets.txt")) == 1000
    modes = {Image.open(s.path).mode for s in ds}
    assert modes == {"RGB", "L"}  # at least one grayscale JPEG
    assert sum(s.path.stat().st_size for s in ds) < 3_000_000
    assert (d / "PROVENANCE.md").is_file()
    # the class index in each file name's wnid agrees with the synsets file
    wnids = [w for w, _ in load_synsets(d / "synsets.txt")]
    assert all(wnids[s.label] == s.path.name.split("_")[0] for s in ds)


def test_demo_copy_loads_from_anywhere(tmp_path):
    shutil.copytree(demo_dir(), tmp_path / "demo")
    ds = load_dataset(tmp_path / "demo" / "images", tmp_path / "demo" / "labels.txt")
    assert [s.label for s in ds] == [s.label for s in demo_dataset()]


def test_demo_files_are_declared_package_data():
    """Every bundled demo file matches pyproject's package-data, so wheels ship it."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("not running from a source checkout")
    patterns = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["mnv3"]
    pkg = demo_dir().parents[1]  # .../mnv3
    files = [p.relative_to(pkg).as_posix() for p in demo_dir().rglob("*") if p.is_file()]
    assert files

    def shipped(f, pat):  # setuptools globs: '*' stays within one folder
        fp, pp = f.split("/"), pat.split("/")
        return len(fp) == len(pp) and all(fnmatch.fnmatch(a, b) for a, b in zip(fp, pp))

    unshipped = [f for f in files if not any(shipped(f, pat) for pat in patterns)]
    assert unshipped == []


# ---------------------------------------------------------------- issue 13: dataset roots
def _dataset_root(tmp_path) -> Path:
    """images/ + labels.txt, like the demo set and ../shared/datasets/imagenet-sample-500."""
    root = tmp_path / "sample"
    shutil.copytree(demo_dir() / "images", root / "images")
    shutil.copy(demo_dir() / "labels.txt", root / "labels.txt")
    return root


def test_a_dataset_root_given_as_image_folder_is_refused_with_the_right_flag(tmp_path):
    """It used to be read as an ImageFolder with one class, 'images': all labels 0, top-1 0."""
    root = _dataset_root(tmp_path)
    with pytest.raises(DataError, match=r"holds images/ and labels\.txt, a dataset folder.*"
                                        r"pass --dataset \S+sample \(or --image-dir \S+images "
                                        r"--label-file \S+labels\.txt\)"):
        load_dataset(root)


def test_an_image_folder_with_one_class_warns(tmp_path):
    from mnv3.errors import Mnv3Warning

    for name in ("a.png", "b.png"):
        _img(tmp_path / "root" / "photos" / name)
    with pytest.warns(Mnv3Warning, match=r"ImageFolder with one class, 'photos': every image "
                                         r"gets label 0.*pass --image-dir \S+photos"):
        ds = load_dataset(tmp_path / "root")
    assert [s.label for s in ds] == [0, 0]
