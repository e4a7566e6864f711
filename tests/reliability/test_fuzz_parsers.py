"""Fuzzed parsers (issue 19): label files, synsets files, meta.json, checkpoints, images.

Property: whatever the bytes, a parser returns a result or raises one of mnv3's own user errors
(``Mnv3Error``): never another exception (our bug), never a hang. Hypothesis runs a bounded,
derandomized set of examples (the same every run, so CI is stable and fast: the module takes
~30 s here); set ``MNV3_FUZZ_EXAMPLES=2000`` to search harder locally. A failure found is kept
as an ``@example`` below, so it stays a regular test.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")  # the dev extra installs it
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mnv3.errors import Mnv3Error  # noqa: E402

EXAMPLES = int(os.environ.get("MNV3_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
PER_EXAMPLE_S = 20  # one example taking longer than this is a hang


@contextmanager
def no_hang(seconds: int = PER_EXAMPLE_S):
    """Fail (instead of hanging the suite) when the body runs longer than ``seconds``."""
    def fire(*_):
        raise TimeoutError(f"a parser ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def only_user_errors(fn, *args, **kwargs):
    """Call ``fn``; a user error is a fine outcome (returned), anything else fails the test."""
    with no_hang():
        try:
            return fn(*args, **kwargs)
        except Mnv3Error as e:
            message = str(e)
            assert "\n" not in message.strip(), message  # one line, for the CLI
            assert len(message) < 3000, message[:300]  # bounded (item 3)
            return e


@pytest.fixture(scope="module")
def work():
    d = Path(tempfile.mkdtemp(prefix="mnv3fuzz"))
    (d / "imgs").mkdir()
    for name in ("a.png", "b b.JPEG", "sub/c.jpg"):
        (d / "imgs" / name).parent.mkdir(exist_ok=True)
        (d / "imgs" / name).write_bytes(b"")  # listing only: labels are parsed, not decoded
    yield d
    shutil.rmtree(d, ignore_errors=True)


# A label line: mostly well-formed pieces, mixed with anything.
NAMES = st.sampled_from(["a.png", "b b.JPEG", "sub/c.jpg", "../x.png", "/etc/passwd", "sub\\c.jpg",
                         "ghost.png", "", "#", "a.png a.png"])
TOKENS = st.one_of(st.integers(-3, 1005).map(str), st.sampled_from(["n01440764", "n99999999",
                                                                      "cat", "1e3", "0x1", ""]))
LINES = st.one_of(st.tuples(NAMES, TOKENS).map(" ".join), st.text(max_size=40))
LABEL_TEXT = st.lists(LINES, max_size=8).map("\n".join)
SYNSET_LINES = st.one_of(st.sampled_from(["n01440764 tench", "n01443537 goldfish, Carassius",
                                          "n01440764", "tench", "", "  ", "n0144076 x"]),
                         st.text(max_size=30))
SYNSETS_TEXT = st.lists(SYNSET_LINES, max_size=6).map("\n".join)


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    return path


@FUZZ
@given(labels=st.one_of(LABEL_TEXT, st.binary(max_size=200)),
       synsets=st.one_of(st.none(), SYNSETS_TEXT, st.binary(max_size=100)),
       num_classes=st.one_of(st.none(), st.integers(1, 1000)))
@example(labels="a.png 0\nb b.JPEG 1\nsub/c.jpg 2", synsets=None, num_classes=None)
@example(labels="\ud800 1", synsets=None, num_classes=None)  # a lone surrogate as UTF-8 bytes
@example(labels="a.png " + "9" * 5000, synsets=None, num_classes=None)  # beyond int()'s digits
def test_label_and_synsets_files(work, labels, synsets, num_classes):
    from mnv3.data.datasets import Sample, load_dataset

    lab = _write(work / "labels.txt", labels)
    syn = _write(work / "synsets.txt", synsets) if synsets is not None else None
    out = only_user_errors(load_dataset, work / "imgs", lab, syn, num_classes=num_classes)
    if not isinstance(out, Mnv3Error):
        assert all(isinstance(s, Sample) for s in out)
        assert all(s.label is None or s.label >= 0 for s in out)


@FUZZ
@given(synsets=st.one_of(SYNSETS_TEXT, st.binary(max_size=200)))
def test_synsets_file(work, synsets):
    from mnv3.data.datasets import load_synsets

    out = only_user_errors(load_synsets, _write(work / "synsets.txt", synsets))
    if not isinstance(out, Mnv3Error):
        assert out and all(isinstance(w, str) and isinstance(n, str) for w, n in out)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda kids: st.lists(kids, max_size=4)
                    | st.dictionaries(st.text(max_size=10), kids, max_size=4), max_leaves=10)


@pytest.fixture(scope="module")
def good_meta(tiny) -> dict:
    return json.loads((tiny["model"] / "meta.json").read_text())


@settings(FUZZ, max_examples=max(20, EXAMPLES // 2))
@given(data=st.data())
def test_meta_json(tiny, good_meta, data):
    """meta.json: a valid one with one field replaced by any JSON value, a random JSON document,
    or random bytes. Reading gives a ModelMeta of the right types or a ModelError; loading the
    model gives a Session or a user error."""
    from mnv3.backends import load
    from mnv3.meta import read_meta

    kind = data.draw(st.sampled_from(["field", "preprocess", "document", "bytes"]))
    d = json.loads(json.dumps(good_meta))
    if kind == "field":
        d[data.draw(st.sampled_from(sorted(d)))] = data.draw(JSON)
        text = json.dumps(d)
    elif kind == "preprocess":
        d["preprocess"][data.draw(st.sampled_from(sorted(d["preprocess"])))] = data.draw(JSON)
        text = json.dumps(d)
    elif kind == "document":
        text = json.dumps(data.draw(JSON))
    else:
        text = data.draw(st.binary(max_size=300))
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        shutil.copytree(tiny["model"], model)
        _write(model / "meta.json", text)
        meta = only_user_errors(read_meta, model)
        if isinstance(meta, Mnv3Error):
            return
        assert isinstance(meta.batch_size, int) and isinstance(meta.compiled_file, str)
        session = only_user_errors(load, model)
        if not isinstance(session, Mnv3Error):
            session.close()


def _torch_bytes(obj, **kw) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def saved_checkpoint() -> bytes:
    import torch

    return _torch_bytes({"features.0.0.weight": torch.zeros(16, 3, 3, 3), "x": torch.ones(2)})


MAGICS = [b"PK\x03\x04", b"\x80\x02", b"\x80\x04", b"\x80\x05", b"", b"\x08\x07", b"{"]
PICKLABLE = st.recursive(st.none() | st.booleans() | st.integers() | st.floats()
                         | st.text(max_size=10) | st.binary(max_size=10),
                         lambda kids: st.lists(kids, max_size=3) | st.tuples(kids, kids)
                         | st.dictionaries(st.text(max_size=8), kids, max_size=3), max_leaves=8)


@FUZZ
@given(data=st.data())
def test_checkpoint(work, saved_checkpoint, data):
    """Random bytes behind a checkpoint's magic, truncated or corrupted torch.save zips, pickles
    of random containers (any protocol): a LoadedModel or a CheckpointError, nothing else."""
    from mnv3.models.checkpoints import load_checkpoint

    kind = data.draw(st.sampled_from(["magic", "truncated", "flipped", "pickle", "torch"]))
    if kind == "magic":
        blob = data.draw(st.sampled_from(MAGICS)) + data.draw(st.binary(max_size=300))
    elif kind == "truncated":
        blob = saved_checkpoint[:data.draw(st.integers(0, len(saved_checkpoint) - 1))]
    elif kind == "flipped":
        i = data.draw(st.integers(0, len(saved_checkpoint) - 1))
        blob = saved_checkpoint[:i] + bytes([saved_checkpoint[i] ^ 0xFF]) + saved_checkpoint[i + 1:]
    elif kind == "pickle":
        blob = pickle.dumps(data.draw(PICKLABLE), protocol=data.draw(st.integers(0, 5)))
    else:
        blob = _torch_bytes(data.draw(PICKLABLE))
    only_user_errors(load_checkpoint, _write(work / "w.pth", blob))


IMAGE_MAGICS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"RIFF\x00\x00\x00\x00WEBP",
                b"II*\x00", b"MM\x00*", b"P6\n"]


@pytest.fixture(scope="module")
def real_png(tmp_path_factory) -> bytes:
    from tiny_onnx import write_images

    return write_images(tmp_path_factory.mktemp("png"), 1)[0].read_bytes()


@FUZZ
@given(data=st.data())
def test_image_decoding(work, real_png, data):
    """Random bytes after an image format's magic number, and a real PNG cut or corrupted: the
    preprocessed array or a DataError (which infer skips), never another exception."""
    import numpy as np

    from mnv3.data.preprocess import preprocess_image
    from mnv3.meta import PreprocessCfg

    kind = data.draw(st.sampled_from(["magic", "truncated", "flipped"]))
    if kind == "magic":
        blob = data.draw(st.sampled_from(IMAGE_MAGICS)) + data.draw(st.binary(max_size=400))
    elif kind == "truncated":
        blob = real_png[:data.draw(st.integers(0, len(real_png) - 1))]
    else:
        i = data.draw(st.integers(0, len(real_png) - 1))
        blob = real_png[:i] + bytes([real_png[i] ^ data.draw(st.integers(1, 255))]) + real_png[i + 1:]
    out = only_user_errors(preprocess_image, _write(work / "x.png", blob),
                           PreprocessCfg(resize=36, crop=32))
    if not isinstance(out, Mnv3Error):
        assert out.shape == (3, 32, 32) and out.dtype == np.float32
