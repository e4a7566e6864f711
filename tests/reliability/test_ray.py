"""--engine ray (issue 18) on a local Ray cluster started here: the same files as the local
path, a killed model actor retried, Ctrl-C and unreachable clusters handled. Skipped without
Ray (pip install -e ".[ray]"); one cluster for the module (it takes 10-30 s to start)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tiny_onnx import write_images

from .helpers import CFG, assert_user_error

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from mnv3.data.datasets import load_dataset  # noqa: E402
from mnv3.inference import infer  # noqa: E402

ACTOR = "MapBatches(ModelActor)"  # in the actor processes' titles (Ray Data's MapWorker)
TIMING = {"seconds", "engine_seconds", "images_per_s", "engine_images_per_s", "output_dir",
          "workers", "engine"}


@pytest.fixture(scope="module")
def cluster():
    """A local cluster on loopback: 2 CPUs for decoding plus one per model actor."""
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """40 decodable images, one undecodable and one whose name is not UTF-8 (issue 19)."""
    d = tmp_path_factory.mktemp("ray_images")
    write_images(d, 40)
    (d / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    os.link(next(d.glob("*.png")), os.fsencode(d) + b"/caf\xe9.png")
    return d


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != "infer.json"}


def _summary(out: Path) -> dict:
    d = json.loads((out / "infer.json").read_text())
    return {k: v for k, v in d.items() if k not in TIMING}


def test_ray_writes_the_local_files_byte_for_byte(cluster, tiny, images, tmp_path):
    samples = load_dataset(images, None, None, num_classes=10)
    local = infer(tiny["model"], samples, tmp_path / "local", progress=False)
    res = infer(tiny["model"], samples, tmp_path / "ray", engine="ray", workers=2,
                progress=False)
    assert (res.processed, res.skipped, res.engine) == (local.processed, 1, "ray")
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")
    assert b"zz_broken.png\tcannot decode image" in _files(tmp_path / "ray")["skipped.txt"]
    assert _summary(tmp_path / "ray") == _summary(tmp_path / "local")
    assert not [p for p in (tmp_path / "ray").iterdir() if p.name.startswith(".")]


def test_ray_decode_native_writes_the_local_exact_files(cluster, cpp_build, tiny, images,
                                                        tmp_path):
    """The decode tasks decode natively: the exact run's files, skipped.txt's words too."""
    samples = load_dataset(images, None, None, num_classes=10)
    infer(tiny["model"], samples, tmp_path / "local", progress=False)
    res = infer(tiny["model"], samples, tmp_path / "ray", engine="ray", workers=2,
                progress=False, decode="native")
    assert res.decode == "native" and res.skipped == 1
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")


def test_a_ray_shard_and_a_local_shard_merge_into_the_local_run(cluster, tiny, images,
                                                               tmp_path):
    """--shard on two drivers, one of them on Ray: mnv3 merge gives the one run's files."""
    from mnv3.shards import merge

    samples = load_dataset(images, None, None, num_classes=10)
    infer(tiny["model"], samples, tmp_path / "local", progress=False)
    infer(tiny["model"], samples, tmp_path / "s1", engine="ray", workers=2, shard="1/2",
          progress=False)
    infer(tiny["model"], samples, tmp_path / "s2", shard="2/2", progress=False)
    merge([tmp_path / "s1", tmp_path / "s2"], tmp_path / "all")
    assert _files(tmp_path / "all") == _files(tmp_path / "local")


def test_killed_actor_is_retried_and_results_are_complete(cluster, tiny, tmp_path,
                                                          monkeypatch):
    """SIGKILL one model actor's process at the first results: Ray restarts it and retries
    its batches; the files equal the local run's."""
    d = tmp_path / "many"
    write_images(d, 120)
    samples = load_dataset(d, None, None, num_classes=10)
    infer(tiny["model"], samples, tmp_path / "local", progress=False)
    from mnv3.results import ResultWriter

    real_add, killed = ResultWriter.add, []

    def add_then_kill(self, batch, logits):
        if not killed:
            killed.append(_kill_one_actor())
        return real_add(self, batch, logits)

    monkeypatch.setattr(ResultWriter, "add", add_then_kill)
    res = infer(tiny["model"], samples, tmp_path / "ray", engine="ray", workers=2,
                progress=False)
    assert killed[0] is not None, "no model actor process found to kill"
    assert res.processed == 120 and res.skipped == 0
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")


def _kill_one_actor() -> int | None:
    for _ in range(50):
        for pid in os.listdir("/proc"):
            if pid.isdigit() and _is_actor(pid):
                os.kill(int(pid), signal.SIGKILL)
                return int(pid)
        time.sleep(0.1)
    return None


def _is_actor(pid: str) -> bool:
    try:
        return ACTOR.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_ctrl_c_leaves_no_partial_files(cluster, tiny, images, tmp_path, monkeypatch):
    def interrupt(self, batch, logits):
        raise KeyboardInterrupt

    monkeypatch.setattr("mnv3.results.ResultWriter.add", interrupt)
    samples = load_dataset(images, None, None, num_classes=10)
    with pytest.raises(KeyboardInterrupt):
        infer(tiny["model"], samples, tmp_path / "new", engine="ray", progress=False)
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "eval_result_1.txt").write_text("earlier run\n")
    with pytest.raises(KeyboardInterrupt):
        infer(tiny["model"], samples, tmp_path / "old", engine="ray", progress=False)
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["eval_result_1.txt"]


def test_cli_engine_ray_and_an_unreachable_address(cluster, cli, tiny, images, tmp_path):
    out = tmp_path / "out"
    res = cli("infer", "--model", tiny["model"], "--image-dir", images, "--output-dir", out,
              "--engine", "ray", "--workers", "1", "--no-progress")
    assert res.code == 0, res.err
    assert "model actors on Ray" in res.out and (out / "eval_result_5.txt").is_file()
    res = cli("infer", "--model", tiny["model"], "--image-dir", images, "--output-dir",
              tmp_path / "x", "--engine", "ray", "--address", "127.0.0.1:1")
    assert_user_error(res, 2, r"cannot reach the Ray cluster at 127\.0\.0\.1:1",
                      r"ray start --head|--address local")
    assert not (tmp_path / "x").exists()
    res = cli("infer", "--model", tiny["model"], "--output-dir", tmp_path / "y",
              "--address", "auto")
    assert_user_error(res, 2, r"--address .* options of --engine ray", r"--engine ray")


def test_worker_threads_and_strict(cluster, tiny, images, tmp_path):
    samples = load_dataset(images, None, None, num_classes=10)
    from mnv3.errors import DataError, UsageError

    with pytest.raises(UsageError, match="--threads-per-worker must be at least 1"):
        infer(tiny["model"], samples, tmp_path / "a", engine="ray", threads_per_worker=0)
    with pytest.raises(DataError, match="zz_broken.png.*--strict"):
        infer(tiny["model"], samples, tmp_path / "b", engine="ray", strict=True,
              progress=False)
    assert not (tmp_path / "b").exists()



def _tree(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` (annotated copies included) but the timings in infer.json."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "infer.json"}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_real_images_give_the_local_files_on_both_engines(cluster, tiny_model, backend,
                                                           tmp_path):
    """Issue 18 item 5: the shared ImageNet sample (the bundled demo images where ../shared is
    absent) with its labels, an ONNX Runtime and an OpenVINO model, annotated copies too: the
    Ray run writes what the local run writes, byte for byte."""
    if backend == "openvino":
        pytest.importorskip("openvino")
    import mnv3
    from conftest import IMAGENET_SAMPLE

    folder = IMAGENET_SAMPLE if (IMAGENET_SAMPLE / "labels.txt").is_file() else \
        Path(mnv3.__file__).parent / "data" / "demo"
    image_dir = folder / "images" if (folder / "images").is_dir() else folder
    src = tiny_model(dynamic=True, images=6, classes=1000)
    model = tmp_path / "model"
    mnv3.build(src.onnx, model, quant_mode="force_float32", shape_mutable=False, batch_size=4,
               preprocess=CFG, calib_dir=src.images, backend=backend,
               options={"progress": False})
    samples = load_dataset(image_dir, folder / "labels.txt", None, num_classes=1000)
    local = infer(model, samples, tmp_path / "local", save_images=True, progress=False)
    res = infer(model, samples, tmp_path / "ray", engine="ray", workers=2, save_images=True,
                progress=False)
    assert res.processed == local.processed == len(samples) and res.skipped == 0
    assert (res.top1, res.top5) == (local.top1, local.top5)
    ray_files = _tree(tmp_path / "ray")
    assert ray_files == _tree(tmp_path / "local")
    assert sum(name.startswith("images/") for name in ray_files) == len(samples)
