"""ONNX Runtime int8 (backends/onnxruntime_quant.py): calibration reuses the inference
preprocessing; reproducible subsets; graph edits (onnx_source)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from mnv3 import calibration as calib
from mnv3 import onnx_source
from mnv3.backends import onnxruntime_calib as oc
from mnv3.backends import onnxruntime_quant as q
from mnv3.backends.onnxruntime_fp16 import convert_fp16
from mnv3.data.preprocess import preprocess_image
from mnv3.errors import UsageError
from mnv3.meta import PreprocessCfg
from tiny_onnx import SIZE, write_images

CFG = PreprocessCfg(resize=40, crop=SIZE, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


def test_calibration_tensors_are_the_inference_tensors(tmp_path):
    files = write_images(tmp_path / "img", 5)
    reader = oc.make_reader(files, CFG, "input", batch=2, progress=False)
    got = []
    while (d := reader.get_next()) is not None:
        assert set(d) == {"input"} and d["input"].dtype == np.float32
        got.append(d["input"])
    assert [len(b) for b in got] == [2, 2, 1]  # streamed in batches, never all at once
    expected = np.stack([preprocess_image(f, CFG) for f in files])
    assert np.array_equal(np.concatenate(got), expected)  # bit-identical


def test_split_is_seeded_sorted_and_disjoint(tmp_path):
    files = write_images(tmp_path / "img", 20)
    a, rest = calib.split_calibration(list(reversed(files)), 7)
    b, _ = calib.split_calibration(files, 7)
    assert a == b == sorted(a) and len(a) == 7 and not set(a) & set(rest)
    assert sorted(a + rest) == sorted(files)
    assert calib.files_sha256(a) == calib.files_sha256(b) != calib.files_sha256(rest)
    everything, none = calib.split_calibration(files, 50)
    assert everything == sorted(files) and none == []


def test_list_images_finds_images_subfolder_and_rejects_missing(tmp_path):
    write_images(tmp_path / "ds" / "images", 3)
    (tmp_path / "ds" / "labels.txt").write_text("x 1\n")
    assert len(calib.list_images(tmp_path / "ds")) == 3
    with pytest.raises(UsageError, match="does not exist"):
        calib.list_images(tmp_path / "nope")


def test_set_batch_dim(tiny_model):
    m = onnx_source.set_batch_dim(onnx.load(str(tiny_model(dynamic=True, images=4).onnx)), 8)
    inp, out = onnx_source.graph_io(m)
    assert onnx_source.dims_of(inp) == [8, 3, SIZE, SIZE] and onnx_source.dims_of(out)[0] == 8
    m = onnx_source.set_batch_dim(m, "batch")
    assert onnx_source.dims_of(onnx_source.graph_io(m)[0])[0] == "batch"


def test_default_float_ends(tiny_model, tmp_path):
    tiny = tiny_model(dynamic=True, images=4)
    files = tiny.files
    s = q.quantize_int8(tiny.onnx, tmp_path / "q.onnx", files, CFG, progress=False)
    model = onnx.load(str(tmp_path / "q.onnx"))
    convs = q.quantized_node_names(model)
    # 5 convs + the Gemm: the first three and the last two stay float by default
    assert len(convs) == 1 and len(s["excluded_nodes"]) == 5
    assert not set(convs) & set(s["excluded_nodes"])


def test_mixed_fp16_keeps_int8_convolutions_fusable(tiny_model, tmp_path):
    """The fp16 converter's cast round trips must not stop ORT fusing DQ->Conv->Q to int8."""
    tiny = tiny_model(dynamic=True, images=4)
    files = tiny.files
    q.quantize_int8(tiny.onnx, tmp_path / "q.onnx", files, CFG, progress=False,
                    options={"float_first": 0, "float_last": 0})
    model = onnx.load(str(tmp_path / "q.onnx"))
    convs = q.quantized_node_names(model)
    assert len(convs) == 6  # 5 convs + the Gemm
    mixed = convert_fp16(model, keep_fp32_nodes=convs)
    producers = {o: n for n in mixed.graph.node for o in n.output}
    for n in mixed.graph.node:
        if n.name in convs:  # fed straight by DequantizeLinear, no Cast in between
            assert {producers[i].op_type for i in n.input} == {"DequantizeLinear"}


def test_bias_correction_removes_the_mean_shift_of_int8_weights():
    """After correction, a conv with int8-rounded weights has the float conv's mean output."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    # channels with very different ranges, like depthwise ones, quantized per tensor
    scale = np.where(np.arange(8) % 2 == 1, 30.0, 1.0)[:, None, None, None]
    w = (rng.standard_normal((8, 4, 3, 3)) * scale).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="c", pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 16, 16])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = (rng.standard_normal((16, 4, 16, 16)) + 2.0).astype(np.float32)  # non-zero mean
    corrected, n = oc.bias_correct(model, [x[:8], x[8:]], per_channel=False)
    b2 = numpy_helper.to_array(corrected.graph.initializer[1])
    wq = oc.fake_quant_weight(w.astype(np.float64), 127, per_channel=False)

    # mean output over interior pixels (no padding there): mean input patch . weights + bias
    patch = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3)).mean((0, 2, 3))

    def mean_out(weight, bias):
        return np.einsum("ikl,oikl->o", patch, weight) + bias

    float_mean = mean_out(w, b)
    before = np.abs(mean_out(wq, b) - float_mean).max()
    after = np.abs(mean_out(wq, b2) - float_mean).max()
    assert n == 1 and after < before / 10


@pytest.mark.parametrize("isa", ["avx512_vnni", "avx2"])
def test_bias_correction_models_the_weights_ort_actually_writes(tiny_model, tmp_path, isa):
    """fake_quant_weight must equal ORT's weights for every recipe (the ISA decides 7 or 8 bits),
    or the correction corrects a fiction."""
    from onnx import numpy_helper

    tiny = tiny_model(dynamic=True, images=4)
    files = tiny.files
    s = q.quantize_int8(tiny.onnx, tmp_path / "q.onnx", files, CFG, progress=False,
                        options={"float_first": 0, "float_last": 0, "isa": isa})
    qrange = q.weight_qrange("int8", s["reduce_range"])
    assert s["reduce_range"] == (isa == "avx2")  # 7-bit weights only where u8 x s8 saturates
    source = onnx.load(str(tiny.onnx))
    float_w = {i.name: numpy_helper.to_array(i) for i in source.graph.initializer}
    model = onnx.load(str(tmp_path / "q.onnx"))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    checked = 0
    for n in model.graph.node:
        name = n.input[0].removesuffix("_quantized")
        if n.op_type == "DequantizeLinear" and name in float_w and float_w[name].ndim == 4 \
                and init[n.input[0]].dtype in (np.int8, np.uint8):
            scale = init[n.input[1]].reshape(-1, 1, 1, 1)
            zero = init[n.input[2]].astype(np.float64).reshape(-1, 1, 1, 1)
            ort_w = (init[n.input[0]].astype(np.float64) - zero) * scale
            ours = oc.fake_quant_weight(float_w[name].astype(np.float64), qrange,
                                           per_channel=True)
            np.testing.assert_allclose(ort_w, ours, rtol=1e-5, atol=1e-7)
            checked += 1
    assert checked >= 3
