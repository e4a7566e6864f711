"""Datasets: an image folder (plus labels) -> a sorted list of ``Sample(path, label)``.

Four layouts, chosen by what is given (``load_dataset``):

* a folder plus a label file of ``filename class_index`` lines (the seed's format);
* a folder plus a label file of ``filename wnid`` lines, mapped through a synsets file
  (``wnid readable name`` per line, line N = class index N);
* an ImageFolder tree (one sub-folder per class; class index = the folder's line in the synsets
  file when one is given, else its rank among the sorted folder names, as torchvision does);
* an unlabeled folder (predict only: ``label`` is None).

Every problem is a ``DataError`` that names the file (and line) and says what to do. File names
from a label file must stay inside the image folder: ``../../etc/passwd`` is refused. Synsets
files and single labels are read by ``mnv3.data.labels``.

Hostile entries (issue 19): an entry named like an image that is not a regular file (a FIFO, a
socket, a device) is kept in the list, so that decoding skips it and lists it in skipped.txt with
the reason (``mnv3.data.files.open_regular``), or stops at it under ``--strict``; it needs no
line in a label file. A file name that is not UTF-8 is matched in a label file by its escaped
name (``caf\\xe9.JPEG``, ``mnv3.data.files.escape_name``), as result files write it. Messages quote
at most a bounded prefix of a label line (``mnv3.data.files.quote``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from mnv3.data.files import QUOTE_CHARS, clip, escape_name, quote, shown, with_deadline
from mnv3.data.labels import (  # noqa: F401 - load_class_names: read from here by callers
    check_range, load_class_names, load_synsets, parse_label, read_lines, safe_name)
from mnv3.errors import DataError, Mnv3Warning

# The one set of names that count as images (infer, run, export --verify-images, calibration),
# looked for case-insensitively and listed in the "no images found" error. The same list as
# cpp/src/dataset.cpp's EXTENSIONS, so both programs read the same files of a folder; Pillow
# decodes them all. No .gif (issue 14): still images of a classifier's domain are not GIFs,
# and a file that inference never reads must not calibrate the model either.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class Sample(NamedTuple):
    """One image: its path and its class index (None when unlabeled). Unpacks as (path, label)."""

    path: Path
    label: int | None = None


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def demo_dir() -> Path:
    """The bundled demo folder inside the package: ``images/``, ``labels.txt``, ``synsets.txt``."""
    return Path(__file__).resolve().parent / "demo"


def demo_dataset() -> list[Sample]:
    """The bundled demo images (28 real ImageNet photos) with their labels."""
    d = demo_dir()
    return load_dataset(d / "images", d / "labels.txt", d / "synsets.txt")


def load_dataset(image_dir: str | os.PathLike, label_file: str | os.PathLike | None = None,
                 synsets_file: str | os.PathLike | None = None, *,
                 num_classes: int | None = None) -> list[Sample]:
    """The images under ``image_dir`` with their labels, sorted by path.

    ``num_classes`` (or the synsets file's length) bounds class indices; pass the model's
    number of classes to catch labels it can never predict.
    """
    root = Path(image_dir)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder; "
                        "pass the folder that holds your images")
    synsets = load_synsets(synsets_file) if synsets_file is not None else None
    if num_classes is None and synsets is not None:
        num_classes = len(synsets)
    if label_file is None:
        _refuse_dataset_root(root)
    images = _find_images(root)
    if label_file is not None:
        samples = _from_label_file(root, images, Path(label_file), synsets, num_classes)
    elif images and all(len(rel.parts) == 1 for rel in images):
        samples = [Sample(root / rel, None) for rel in images]
    else:
        samples = _from_image_folder(root, images, synsets, num_classes)
    return sorted(samples, key=lambda s: str(s.path))


def is_dataset_root(folder: Path) -> bool:
    """A folder laid out like the demo set and the ImageNet sample: images/ + labels.txt."""
    return (folder / "images").is_dir() and (folder / "labels.txt").is_file()


def _refuse_dataset_root(root: Path) -> None:
    """Read as an ImageFolder, a dataset root is one class, ``images``: every label 0 and its
    labels.txt ignored, for an accuracy of ~0 without a word (issue 13)."""
    if is_dataset_root(root):
        raise DataError(
            f"{root} holds images/ and labels.txt, a dataset folder, not a folder of images; "
            f"pass --dataset {root} (or --image-dir {root / 'images'} --label-file "
            f"{root / 'labels.txt'})")


def _find_images(root: Path) -> list[PurePosixPath]:
    """Image files under ``root`` (recursively, skipping hidden entries), relative and sorted."""
    found = walk_images(root)
    if not found:
        raise DataError(
            f"no images found in {shown(root)}; looked for files ending in "
            f"{', '.join(IMAGE_EXTENSIONS)} (any case)"
        )
    return found


def walk_images(root: Path) -> list[PurePosixPath]:
    """Entries named like images under ``root``, relative and sorted: the one folder walk of
    infer, run and export --verify-images. Recursive (following symlinked folders, each folder
    once), hidden entries skipped; entries that are not regular files (a FIFO, a socket, a
    device, a folder named like an image) are kept, for decoding to skip with the reason
    (``mnv3.data.files.open_regular``)."""
    found = []
    seen: set[tuple[int, int]] = set()  # (device, inode) of folders walked: no symlink loops
    folders = [root]
    while folders:
        folder = folders.pop()
        st, dirnames, filenames = with_deadline(f"listing folder {shown(folder)}", DataError,
                                                _scan_folder, folder)
        if st is None or (st.st_dev, st.st_ino) in seen:  # gone or unreadable; walked
            continue
        seen.add((st.st_dev, st.st_ino))
        # a folder named like an image (x.jpg/) is an entry for decoding to skip, not a class
        named_like_images = [d for d in dirnames if is_image_file(Path(d))]
        folders.extend(folder / d for d in dirnames
                       if not d.startswith(".") and d not in named_like_images)
        base = PurePosixPath(folder.relative_to(root).as_posix())
        found.extend(base / f for f in filenames + named_like_images
                     if is_image_file(Path(f)))
    return sorted(found)


def _scan_folder(folder: Path) -> tuple[os.stat_result | None, list[str], list[str]]:
    """One folder's (stat, sub-folder names, other names), symlinks followed as os.walk's
    followlinks does; a folder that cannot be read gives (None, [], []) (os.walk skips it
    too). Runs with the read deadline: listing a stalled network mount blocks in the kernel."""
    dirs: list[str] = []
    others: list[str] = []
    try:
        st = os.stat(folder)
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                (dirs if is_dir else others).append(entry.name)
    except OSError:
        return None, [], []
    return st, dirs, others


def _from_label_file(root: Path, images: list[PurePosixPath], label_file: Path,
                     synsets: list[tuple[str, str]] | None,
                     num_classes: int | None) -> list[Sample]:
    wnid_index = {w: i for i, (w, _) in enumerate(synsets or []) if w}
    on_disk = set(images)
    # names that are not UTF-8, by their escaped form (caf\\xe9.JPEG), looked up before the
    # backslash-to-slash rule of _safe_name (issue 19); they come from disk, so are safe
    escaped = {e: rel for rel in images if (e := escape_name(str(rel))) != str(rel)}
    labels: dict[PurePosixPath, tuple[int, int]] = {}  # name -> (label, line number)
    for lineno, line in enumerate(read_lines(label_file, "label file"), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        where = f"{label_file}:{lineno}"
        parts = text.rsplit(None, 1)  # the file name may contain spaces, the label may not
        if len(parts) != 2:
            raise DataError(f"{where}: cannot parse {quote(text)}; expected 'filename class_index' "
                            "or 'filename wnid'")
        name = escaped.get(parts[0]) or safe_name(parts[0], where)
        label = parse_label(parts[1], where, wnid_index, synsets is not None, num_classes)
        if name in labels:
            raise DataError(f"{where}: {clip(str(name), QUOTE_CHARS)} is already labelled on line {labels[name][1]}; "
                            "remove one of the lines")
        if name not in on_disk:
            raise DataError(f"{where}: label for {clip(str(name), QUOTE_CHARS)} but there is no such image "
                            f"in {shown(root)}; "
                            "remove the line or add the image")
        labels[name] = (label, lineno)
    if not labels:
        raise DataError(f"label file {label_file} has no 'filename class_index' lines; fill it "
                        "in, or drop the label file to predict without labels")
    unlabeled = [rel for rel in images if rel not in labels]
    # not regular files (a FIFO named x.jpg): kept unlabeled, for decoding to skip and list
    unreadable = [rel for rel in unlabeled if _not_regular(root / rel)]
    unlabeled = [rel for rel in unlabeled if rel not in set(unreadable)]
    if unlabeled:
        more = f" and {len(unlabeled) - 1} more" if len(unlabeled) > 1 else ""
        raise DataError(
            f"image {shown(root / unlabeled[0])}{more} has no label in {shown(label_file)}; add "
            f"a line '{escape_name(str(unlabeled[0]))} class_index' or move the image out of "
            "the folder"
        )
    return ([Sample(root / rel, lab) for rel, (lab, _) in labels.items()]
            + [Sample(root / rel, None) for rel in unreadable])


def _not_regular(path: Path) -> bool:
    """A FIFO, socket, device or broken symlink named like an image (isfile follows links)."""
    return not os.path.isfile(path)


def _from_image_folder(root: Path, images: list[PurePosixPath],
                       synsets: list[tuple[str, str]] | None,
                       num_classes: int | None) -> list[Sample]:
    loose = [rel for rel in images if len(rel.parts) == 1]
    if loose:
        raise DataError(
            f"{shown(root)} mixes images ({quote(str(loose[0]))}) with class sub-folders; put every image in its "
            "class folder (ImageFolder), or give a label file"
        )
    classes = sorted({rel.parts[0] for rel in images} | _subdirs(root))
    if synsets is not None and any(w for w, _ in synsets):
        wnid_index = {w: i for i, (w, _) in enumerate(synsets) if w}
        missing = [c for c in classes if c not in wnid_index]
        if missing:
            raise DataError(f"class folder {shown(root / missing[0])} is not a wnid of the synsets file; "
                            "name class folders by wnid (like n01440764)")
        index = {c: wnid_index[c] for c in classes}
    else:
        index = {c: i for i, c in enumerate(classes)}
        if len(classes) == 1:
            _warn_one_class(root, classes[0])
    for c, i in index.items():
        check_range(i, str(root / c), num_classes)
    return [Sample(root / rel, index[rel.parts[0]]) for rel in images]


def _warn_one_class(root: Path, name: str) -> None:
    warnings.warn(
        f"{root} is read as an ImageFolder with one class, {name!r}: every image gets label 0, "
        f"so accuracy means little; if {name}/ only holds the images, pass --image-dir "
        f"{root / name} with its --label-file (or --dataset {root})", Mnv3Warning, stacklevel=3)


def _subdirs(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
