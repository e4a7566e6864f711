"""mnv3.quantize: calibration reuses the inference preprocessing; reproducible subsets; graph edits."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from mnv3 import quantize as q
from mnv3.data.preprocess import preprocess_image
from mnv3.errors import UsageError
from mnv3.meta import PreprocessCfg
from tiny_onnx import SIZE, export_tiny, write_images

CFG = PreprocessCfg(resize=40, crop=SIZE, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


def test_calibration_tensors_are_the_inference_tensors(tmp_path):
    files = write_images(tmp_path / "img", 5)
    reader = q.make_reader(files, CFG, "input", batch=2, progress=False)
    got = []
    while (d := reader.get_next()) is not None:
        assert set(d) == {"input"} and d["input"].dtype == np.float32
        got.append(d["input"])
    assert [len(b) for b in got] == [2, 2, 1]  # streamed in batches, never all at once
    expected = np.stack([preprocess_image(f, CFG) for f in files])
    assert np.array_equal(np.concatenate(got), expected)  # bit-identical


def test_split_is_seeded_sorted_and_disjoint(tmp_path):
    files = write_images(tmp_path / "img", 20)
    a, rest = q.split_calibration(list(reversed(files)), 7)
    b, _ = q.split_calibration(files, 7)
    assert a == b == sorted(a) and len(a) == 7 and not set(a) & set(rest)
    assert sorted(a + rest) == sorted(files)
    assert q.files_sha256(a) == q.files_sha256(b) != q.files_sha256(rest)
    everything, none = q.split_calibration(files, 50)
    assert everything == sorted(files) and none == []


def test_list_images_finds_images_subfolder_and_rejects_missing(tmp_path):
    write_images(tmp_path / "ds" / "images", 3)
    (tmp_path / "ds" / "labels.txt").write_text("x 1\n")
    assert len(q.list_images(tmp_path / "ds")) == 3
    with pytest.raises(UsageError, match="does not exist"):
        q.list_images(tmp_path / "nope")


def test_set_batch_dim(tmp_path):
    export_tiny(tmp_path / "t.onnx", dynamic=True)
    m = q.set_batch_dim(onnx.load(str(tmp_path / "t.onnx")), 8)
    inp, out = q.graph_io(m)
    assert q.dims_of(inp) == [8, 3, SIZE, SIZE] and q.dims_of(out)[0] == 8
    m = q.set_batch_dim(m, "batch")
    assert q.dims_of(q.graph_io(m)[0])[0] == "batch"


def test_mixed_fp16_keeps_int8_convolutions_fusable(tmp_path):
    """The fp16 converter's cast round trips must not stop ORT fusing DQ->Conv->Q to int8."""
    export_tiny(tmp_path / "t.onnx", dynamic=True)
    files = write_images(tmp_path / "img", 4)
    reader = q.make_reader(files, CFG, "input", progress=False)
    q.quantize_int8(tmp_path / "t.onnx", tmp_path / "q.onnx", reader)
    model = onnx.load(str(tmp_path / "q.onnx"))
    convs = q.quantized_node_names(model)
    assert len(convs) == 6  # 5 convs + the Gemm
    mixed = q.convert_fp16(model, keep_fp32_nodes=convs)
    producers = {o: n for n in mixed.graph.node for o in n.output}
    for n in mixed.graph.node:
        if n.name in convs:  # fed straight by DequantizeLinear, no Cast in between
            assert {producers[i].op_type for i in n.input} == {"DequantizeLinear"}
