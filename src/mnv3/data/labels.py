"""Label text files: synsets (line N = class N) and the checks every label goes through.

A synsets line is ``wnid readable name`` (``n01440764 tench``) or a bare class name; a label is
a class index or a wnid mapped through the synsets. Every problem is a ``DataError`` naming the
file and line. Label-file names must stay inside the image folder (``safe_name``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from mnv3.data.files import quote, read_text
from mnv3.errors import DataError

WNID = re.compile(r"^n\d{8}$")


def load_synsets(synsets_file: str | os.PathLike) -> list[tuple[str, str]]:
    """``[(wnid, name), ...]`` in class-index order from a synsets file.

    A line is ``wnid readable name`` (``n01440764 tench``); a line whose first word is not a
    wnid is taken as a bare class name (``tench``) and gets an empty wnid.
    """
    path = Path(synsets_file)
    lines = read_lines(path, "synsets file")
    while lines and not lines[-1].strip():
        lines.pop()  # trailing blank lines are harmless
    out, seen = [], {}
    for lineno, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            raise DataError(
                f"{path}:{lineno}: blank line in a synsets file; line N must be class N, "
                "so remove the blank line"
            )
        first, _, rest = text.partition(" ")
        if WNID.match(first):
            wnid, name = first, rest.strip() or first
            if wnid in seen:
                raise DataError(f"{path}:{lineno}: wnid {wnid} already appears on line {seen[wnid]}; "
                                "each class must appear once")
            seen[wnid] = lineno
        else:
            wnid, name = "", text
        out.append((wnid, name))
    if not out:
        raise DataError(f"synsets file {path} is empty; expected one 'wnid name' line per class")
    return out


def load_class_names(synsets_file: str | os.PathLike) -> list[str]:
    """Readable class names in class-index order (``['tench', 'goldfish', ...]``)."""
    return [name for _, name in load_synsets(synsets_file)]


def parse_label(token: str, where: str, wnid_index: dict[str, int], have_synsets: bool,
                 num_classes: int | None) -> int:
    if WNID.match(token):
        if not have_synsets:
            raise DataError(f"{where}: label {token} is a wnid; pass the synsets file "
                            "(--synsets) that maps wnids to class indices")
        if token not in wnid_index:
            raise DataError(f"{where}: wnid {token} is not in the synsets file; pass the synsets "
                            "file of the dataset the labels come from")
        return wnid_index[token]
    try:
        label = int(token)
    except ValueError:
        raise DataError(f"{where}: label {quote(token)} is neither a class index nor a wnid "
                        "(like n01440764); write a class index or a wnid after the file name"
                        ) from None
    check_range(label, where, num_classes)
    return label


def check_range(label: int, where: str, num_classes: int | None) -> None:
    if label < 0 or (num_classes is not None and label >= num_classes):
        bound = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
        raise DataError(f"{where}: class index {label} is out of range (expected {bound})")


def safe_name(name: str, where: str) -> PurePosixPath:
    """A label-file name as a relative path that cannot leave the image folder.

    Checked lexically (no symlink resolution), so a folder of symlinks the user made still works,
    while ``../x`` or ``/etc/x`` in a label file is refused.
    """
    rel = PurePosixPath(name.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts or re.match(r"^[A-Za-z]:", name):
        raise DataError(f"{where}: file name {quote(name)} points outside the image folder; "
                        "names must be relative to it (like 'img_001.JPEG')")
    return PurePosixPath(*[p for p in rel.parts if p != "."])


def read_lines(path: Path, what: str) -> list[str]:
    """A regular UTF-8 text file under its size cap, as lines (``mnv3.data.files.read_text``)."""
    return read_text(path, what, DataError).splitlines()
