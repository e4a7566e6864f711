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
    """fake_quant_weight must equal ORT's weights for every recipe (the ISA decides plain or
    pair-safe 8-bit scales), or the correction corrects a fiction."""
    from onnx import numpy_helper

    tiny = tiny_model(dynamic=True, images=4)
    files = tiny.files
    s = q.quantize_int8(tiny.onnx, tmp_path / "q.onnx", files, CFG, progress=False,
                        options={"float_first": 0, "float_last": 0, "isa": isa})
    qrange = q.weight_qrange("int8", s["reduce_range"])
    assert not s["reduce_range"]  # 8-bit weights on every CPU class
    assert s["weight_scales"] == ("pair_safe" if isa == "avx2" else "max")
    source = onnx.load(str(tiny.onnx))
    scales = q.pair_safe_scales(source) if isa == "avx2" else {}
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
            safe = scales.get(name)
            ours = oc.fake_quant_weight(float_w[name].astype(np.float64), qrange,
                                        per_channel=True, scale=None if safe is None else safe[1])
            np.testing.assert_allclose(ort_w, ours, rtol=1e-5, atol=1e-7)
            checked += 1
    assert checked >= 3


# ------------------------------------------------- pair-safe weight scales (CPUs without VNNI)
def _qlinear_probe(op: str, w: np.ndarray, group: int = 1) -> tuple[float, float]:
    """ORT's u8 x s8 result and the exact one for activations all 255 (scales 1) through one
    QLinearConv (w: [O, I/g, kh, kw]) or QLinearMatMul (w: [K, N]); output channel 0 /
    column 0 at an interior pixel."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    y_scale = 2000.0  # a uint8 output of 0-255 x 2000 holds any exact sum here
    if op == "Conv":
        cin = w.shape[1] * group
        x = np.full((1, cin, 5, 5), 255, np.uint8)
        node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"],
                                ["yq"], group=group, pads=[1, 1, 1, 1])
        exact = 255.0 * w[0].sum()
    else:
        x = np.full((1, w.shape[0]), 255, np.uint8)
        node = helper.make_node("QLinearMatMul", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"],
                                ["yq"])
        exact = 255.0 * w[:, 0].sum()
    inits = [numpy_helper.from_array(np.array(1.0, np.float32), "xs"),
             numpy_helper.from_array(np.array(0, np.uint8), "xz"),
             numpy_helper.from_array(w.astype(np.int8), "w"),
             numpy_helper.from_array(np.array(1.0, np.float32), "ws"),
             numpy_helper.from_array(np.array(0, np.int8), "wz"),
             numpy_helper.from_array(np.array(y_scale, np.float32), "ys"),
             numpy_helper.from_array(np.array(0, np.uint8), "yz")]
    graph = helper.make_graph(
        [node, helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": x})[0]
    got = y[0, 0, 2, 2] if op == "Conv" else y[0, 0]
    return float(got), float(exact)


def test_pair_safe_scales_model_the_installed_ort_kernels():
    """The pairs ``pair_safe_scales`` keeps within int16 are the ones ORT's u8 x s8 kernels sum
    in int16 on this CPU: input channels k, k+1 at the same kernel tap (Conv), rows k, k+1
    (MatMul); depthwise convolutions and VNNI CPUs never saturate."""
    from mnv3 import sysinfo

    saturates = sysinfo.int8_saturates()

    def clipped(op, w, group=1):  # True when ORT's result fell short of the exact sum
        got, exact = _qlinear_probe(op, w, group)
        return got < exact - 2000

    pair = np.zeros((1, 2, 3, 3)); pair[0, :, 0, 0] = 127  # channels 0, 1 at one tap
    taps = np.zeros((1, 2, 3, 3)); taps[0, 0, 0, :2] = 127  # one channel, two taps
    assert clipped("Conv", pair) is saturates
    assert clipped("Conv", taps) is False
    four = np.zeros((1, 4, 1, 1)); four[0, 1:3, 0, 0] = 127  # channels 1, 2: not a pair
    assert clipped("Conv", four) is False
    at_limit = np.zeros((1, 2, 1, 1)); at_limit[0, :, 0, 0] = (64, 64)  # 255 x 128 fits int16
    assert clipped("Conv", at_limit) is False
    rows = np.zeros((4, 2)); rows[0:2, 0] = 127
    assert clipped("MatMul", rows) is saturates
    assert clipped("Conv", np.full((2, 1, 3, 3), 127.0), group=2) is False  # depthwise


def test_pair_safe_scales_keep_every_pair_within_int16_and_use_8_bits():
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 6, 3, 3)).astype(np.float32)
    w[0, 0, 1, 1] = 20.0  # one outlier: its neighbours are small, so it may use all 8 bits
    dw = rng.standard_normal((6, 1, 3, 3)).astype(np.float32)
    fc = rng.standard_normal((8, 5)).astype(np.float32)  # MatMul [K, N], odd N, K pairs
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "dw"], ["d"], name="dw", group=6, pads=[1] * 4),
         helper.make_node("Conv", ["d", "w"], ["c"], name="conv", pads=[1] * 4),
         helper.make_node("GlobalAveragePool", ["c"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (dw, "dw"), (fc, "fc"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    scales = q.pair_safe_scales(model, ["dw", "conv", "fc"])
    assert set(scales) == {"w", "dw", "fc"} and scales["fc"][0] == 1 and scales["w"][0] == 0
    np.testing.assert_allclose(scales["dw"][1], np.abs(dw).reshape(6, -1).max(1) / 127,
                               rtol=1e-6)  # depthwise: plain 8-bit
    for name, rows in (("w", w.transpose(0, 2, 3, 1).reshape(8, -1)), ("fc", fc.T)):
        qw = np.rint(rows / scales[name][1][:, None].astype(np.float64))
        a = np.abs(np.pad(qw, ((0, 0), (0, rows.shape[1] % 2))))
        assert (a[:, 0::2] + a[:, 1::2]).max() <= 128  # 255 x 128 = 32640 fits int16
        assert np.abs(qw).max() <= 127
        assert (scales[name][1] <= np.abs(rows).max(1) / 63.5 + 1e-7).all()  # never below 7 bits
    assert np.abs(np.rint(w[0, 0, 1, 1] / scales["w"][1][0])) > 100  # the outlier uses 8 bits
