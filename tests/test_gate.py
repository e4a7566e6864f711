"""Issue 12: int8 per CPU class, the accuracy budget every build is held to, compare and verify.

The ISA-specific choices are tested by injecting the ISA class, so both classes are covered on
whichever CPU runs the suite (AVX2-only and AVX-512 VNNI machines both run CI).
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

import mnv3
from mnv3 import gate
from mnv3.backends import onnxruntime_quant as q
from mnv3 import sysinfo
from mnv3.backends import isa_mismatch
from mnv3.cli.main import main as cli
from mnv3.errors import BelowBudgetError, BuildError, UsageError
from mnv3.meta import PreprocessCfg, read_meta
from tiny_onnx import SIZE

CFG = PreprocessCfg(resize=36, crop=SIZE)


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return tiny_model(dynamic=True, images=24)


def _build(tiny, out, mode="qint8_mixed_float32", backend_name="onnxruntime", **options):
    return mnv3.build(tiny.onnx, out, quant_mode=mode, shape_mutable=False, batch_size=4,
                      preprocess=CFG, calib_dir=tiny.images, calib_num=8,
                      backend=backend_name, options={"progress": False, **options})


# ----------------------------------------------------------------------------- the CPU
def _cpuinfo(flags: str):
    return [{"model name": "Test CPU", "flags": flags}]


@pytest.mark.parametrize("flags,isa,saturates", [
    ("fma avx2", "avx2", True),
    ("avx2 avx512f avx512bw avx512vl", "avx512", True),
    ("avx2 avx512f avx512bw avx512_vnni", "avx512_vnni", False),
    ("avx2 avx_vnni", "avx_vnni", False),
    ("avx2 avx512f avx512bw avx512_vnni amx_tile amx_int8", "amx", False),
    ("sse4_2", "other_x86", True),
])
def test_int8_isa_class_from_cpu_flags(flags, isa, saturates):
    assert sysinfo.int8_isa(_cpuinfo(flags), machine="x86_64") == isa
    assert sysinfo.int8_saturates(isa) is saturates
    assert sysinfo.isa_label(isa)  # printed beside every figure


def test_non_x86_never_saturates():
    assert sysinfo.int8_isa(_cpuinfo(""), machine="aarch64") == "non_x86"
    assert not sysinfo.int8_saturates("non_x86")


def test_system_info_and_device_label_carry_the_isa():
    info = sysinfo.system_info()
    assert info["int8_isa"] in sysinfo.INT8_ISAS and set(info["float16"]) == {"bf16", "fp16"}
    assert sysinfo.isa_label(info["int8_isa"]) in sysinfo.device_label(info)


@pytest.mark.parametrize("isa,scales", [("avx2", "pair_safe"), ("avx512", "pair_safe"),
                                        ("avx512_vnni", "max"), ("amx", "max"),
                                        ("non_x86", "max")])
def test_ort_recipe_uses_pair_safe_scales_only_where_int8_saturates(isa, scales):
    recipe = q.default_recipe(isa)
    assert recipe["weight_scales"] == scales and recipe["isa"] == isa
    assert recipe["reduce_range"] is False  # 7-bit weights only when asked for
    assert q.weight_qrange("int8", True) == (-64, 64)
    assert q.weight_qrange("int8", False) == (-127, 127)


@pytest.mark.parametrize("isa,fix", [("avx2", "enable"), ("avx512", "enable"),
                                     ("avx512_vnni", "disable"), ("avx_vnni", "disable")])
def test_nncf_overflow_fix_is_chosen_by_isa(isa, fix):
    openvino_quant = pytest.importorskip("mnv3.backends.openvino_quant")
    from mnv3.backends.base import BuildConfig

    assert openvino_quant.overflow_fix_for(isa) == fix
    cfg = BuildConfig("qint8_mixed_float32", False, 1, options={"isa": isa})
    assert openvino_quant.settings(cfg)["overflow_fix"] == fix
    cfg = BuildConfig("qint8_mixed_float32", False, 1,
                      options={"isa": isa, "overflow_fix": "first_layer_only"})
    assert openvino_quant.settings(cfg)["overflow_fix"] == "first_layer_only"  # user's choice


def test_int8_build_records_the_isa_it_was_quantized_for(tiny, tmp_path):
    meta = _build(tiny, tmp_path / "m", isa="avx512_vnni", speed_check=False,
                  allow_below_budget=True)
    assert meta.extra["isa"] == sysinfo.int8_isa()  # validated here
    assert meta.extra["quantization"]["isa"] == "avx512_vnni"  # quantized for
    assert meta.extra["quantization"]["reduce_range"] is False


# ----------------------------------------------------------------------------- the budget
def test_budget_options():
    assert gate.Budget.from_options({}) == gate.Budget(0.99, 0.99, False)
    assert gate.Budget.from_options({"min_agreement": 99.5}).min_agreement == 0.995
    assert gate.Budget.from_options({"min_agreement": 0.98}).min_agreement == 0.98
    assert gate.Budget.from_options({"max_drop": 0.5}).min_agreement == pytest.approx(0.995)
    assert gate.Budget.from_options({"allow_below_budget": True}).allow_below
    for bad in ({"min_agreement": 150}, {"min_agreement": "x"}, {"min_cosine": 2},
                {"min_agreement": 99, "max_drop": 1}):
        with pytest.raises(UsageError):
            gate.Budget.from_options(bad)


def test_shortfalls_name_each_missed_figure():
    b = gate.Budget(0.99, 0.99)
    ok = {"top1_agreement": 1.0, "top1_agreement_expected": 0.995, "cosine_mean": 0.999}
    assert b.shortfalls(ok) == []
    short = b.shortfalls({"top1_agreement": 0.98, "top1_agreement_expected": 0.97,
                          "cosine_mean": 0.9})
    assert len(short) == 3 and "98.00% < 99.00%" in short[0] and "cosine" in short[2]


def test_a_count_below_budget_fails_only_when_the_budget_makes_it_unlikely():
    """On 200 images at a 99% budget, 2 disagreements are expected: 5 are consistent with it
    (p = 0.053), 6 are not (p = 0.017); the expected agreement must meet the budget itself."""
    b = gate.Budget(0.99, 0.99)

    def fidelity(differ, expected=0.992, n=200):
        return {"top1_agreement": 1 - differ / n, "top1_agreement_expected": expected,
                "count": n, "cosine_mean": 0.999}

    assert gate.disagreement_p_value(200, 5, 0.01) == pytest.approx(0.0517, abs=2e-3)
    assert b.shortfalls(fidelity(3)) == [] and b.shortfalls(fidelity(5)) == []
    short = b.shortfalls(fidelity(6))
    assert len(short) == 1 and "6 of 200 images differ" in short[0]
    assert len(b.shortfalls(fidelity(0, expected=0.985))) == 1  # the margin model decides too
    assert b.shortfalls(fidelity(60, n=2000)) != []  # 3% of 2000 is no coin toss
    assert gate.Budget(1.0, 0.99).shortfalls(fidelity(1, expected=1.0)) != []  # 100% is 100%
    no_model = {"top1_agreement": 0.985, "count": 200, "cosine_mean": 0.999}
    assert gate.Budget(0.99, 0.99).shortfalls(no_model) != []  # no margins: the count decides


def test_expected_agreement_weighs_the_noise_on_the_largest_logits():
    """int8 error grows with a logit's size: noise on the top classes only must count fully,
    not diluted by the hundreds of small logits that never decide a top-1."""
    from mnv3.fidelity import flip_probability, top_logit_noise

    rng = np.random.default_rng(0)
    a = rng.standard_normal((1, 1000)) * 0.1
    a[0, :10] = 10.0 - np.arange(10) * 0.1  # top two 0.1 apart
    noise = np.zeros_like(a)
    noise[0, :10] = rng.standard_normal(10) * 0.2
    assert top_logit_noise(a, a + noise)[0] == pytest.approx(noise[0, :10].std())
    assert flip_probability(a, a + noise)[0] > 0.25  # a 0.1 margin under ~0.2 noise


def test_expected_agreement_counts_near_ties():
    from mnv3.fidelity import flip_probability

    a = np.array([[10.0, 0.0, 0.0], [1.0, 0.99, 0.0]])
    b = a + np.array([[0.01, -0.01, 0.0], [-0.01, 0.01, 0.0]])
    p = flip_probability(a, b)
    assert p[0] < 1e-6 < 0.1 < p[1] < 1.0  # a wide margin never flips; a near tie may


def test_build_below_budget_fails_and_writes_nothing(tiny, tmp_path, capsys):
    out = tmp_path / "m"
    with pytest.raises(BuildError, match="misses its accuracy budget") as e:
        _build(tiny, out, min_agreement=100, min_cosine=1.0, speed_check=False)
    assert "--allow-below-budget" in str(e.value) and "Nothing was written" in str(e.value)
    # the calibration methods this backend offers besides the one used (minmax)
    assert "--calib-method entropy or percentile; more --calib-num" in str(e.value)
    # its own kind of build error (tune tells it from an engine's), the build's exit code
    assert isinstance(e.value, BelowBudgetError) and e.value.exit_code == 6
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.tmp")]


def test_fallback_returns_layers_to_float_and_lists_them(tiny, tmp_path):
    meta = _build(tiny, tmp_path / "m", min_agreement=100, min_cosine=1.0, speed_check=False,
                  allow_below_budget=True, float_first=0, float_last=0)
    fb = meta.extra["fallback"]
    assert fb["int8_layers"] >= 2 and fb["rounds"][0]["float_layers"] == 0
    assert 0 < len(fb["float_layers"]) <= fb["int8_layers"] * gate.MAX_FLOAT_FRACTION
    assert len(fb["rounds"]) >= 2
    assert set(fb["float_layers"]) <= set(meta.extra["quantization"]["excluded_nodes"])
    # below budget but shipped on request: marked in meta.json and its notes
    assert meta.fidelity["within_budget"] is False and meta.fidelity["below_budget"]
    assert meta.notes[0].startswith("BELOW ACCURACY BUDGET")
    assert read_meta(tmp_path / "m").fidelity["below_budget"]


def test_a_build_within_budget_says_so(tiny, tmp_path):
    meta = _build(tiny, tmp_path / "m", mode="force_float16", min_agreement=50, min_cosine=0.5)
    assert meta.fidelity["within_budget"] is True and "fallback" not in meta.extra
    assert meta.fidelity["budget"]["min_agreement"] == 0.5


@pytest.mark.parametrize("ratio,shipped", [(0.8, "force_float32"), (1.3, "int8")])
def test_int8_slower_than_float_ships_float_and_says_so(tiny, tmp_path, monkeypatch, ratio,
                                                        shipped):
    monkeypatch.setattr(gate, "_int8_speed_ratio",
                        lambda *a: (ratio, (100.0 * ratio, 100.0)))
    meta = _build(tiny, tmp_path / "m", allow_below_budget=True)
    check = meta.extra["int8_speed_check"]
    assert check["shipped"] == shipped and check["ratio"] == ratio
    runs_int8 = any(str(p).startswith("int8") for p in meta.op_precisions.values())
    assert runs_int8 is (shipped == "int8")
    assert meta.quant_mode == "qint8_mixed_float32"  # the name asked for stays
    if shipped != "int8":
        assert "slower than float32" in meta.notes[0] and "--keep-slower-int8" in meta.notes[0]


def test_speed_check_measures_both_builds(tiny, tmp_path):
    meta = _build(tiny, tmp_path / "m", allow_below_budget=True)
    check = meta.extra["int8_speed_check"]
    assert check["int8_images_per_s"] > 0 and check["float32_images_per_s"] > 0
    assert check["isa"] == sysinfo.int8_isa() and check["rounds"] == gate.SPEED_ROUNDS


# ----------------------------------------------------------------------------- another CPU
def test_loading_int8_validated_on_another_isa_class_warns_once(tiny, tmp_path, monkeypatch,
                                                               capsys):
    _build(tiny, tmp_path / "m", speed_check=False, allow_below_budget=True)
    meta = read_meta(tmp_path / "m")
    here = sysinfo.int8_isa()
    other = "avx2" if not sysinfo.int8_saturates(here) else "avx512_vnni"
    assert isa_mismatch(meta) is None  # validated on this class
    meta.extra["isa"] = other
    assert "mnv3 verify" in isa_mismatch(meta)
    from mnv3.meta import write_meta

    write_meta(meta, tmp_path / "m")
    capsys.readouterr()
    for _ in range(2):
        mnv3.load(tmp_path / "m").close()
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "mnv3 verify" in err


def test_float_models_never_warn(tiny, tmp_path):
    meta = _build(tiny, tmp_path / "m", mode="force_float32")
    meta.extra["isa"] = "avx2" if not sysinfo.int8_saturates() else "avx512_vnni"
    assert isa_mismatch(meta) is None


# ----------------------------------------------------------------------------- verify / compare
def test_verify_remeasures_and_changes_nothing_unless_asked(tiny, tmp_path, capsys):
    _build(tiny, tmp_path / "m", speed_check=False, allow_below_budget=True,
           min_agreement=0, min_cosine=0)
    before = (tmp_path / "m" / "meta.json").read_bytes()
    from mnv3.verify import verify

    files = sorted(tiny.images.iterdir())
    r = verify(tmp_path / "m", files)
    assert r["within_budget"] and r["isa"] == sysinfo.int8_isa() and not r["updated"]
    assert (tmp_path / "m" / "meta.json").read_bytes() == before
    rc = cli(["verify", str(tmp_path / "m"), "--images", str(tiny.images), "--json", "-"])
    out = capsys.readouterr()
    assert rc == 0 and json.loads(out.out)["within_budget"] is True  # stdout: JSON only
    rc = cli(["verify", str(tmp_path / "m"), "--images", str(tiny.images), "--update"])
    assert rc == 0 and read_meta(tmp_path / "m").fidelity["verified_on"] == sysinfo.int8_isa()


def test_verify_below_budget_exits_9(tiny, tmp_path):
    _build(tiny, tmp_path / "m", speed_check=False, allow_below_budget=True,
           min_agreement=100, min_cosine=1.0)
    assert cli(["verify", str(tmp_path / "m"), "--images", str(tiny.images)]) == 9


def test_verify_needs_the_float_source(tiny, tiny_model, tmp_path, capsys):
    src = tmp_path / "copy.onnx"
    src.write_bytes(tiny.onnx.read_bytes())
    mnv3.build(src, tmp_path / "m", quant_mode="force_float16", shape_mutable=True,
               batch_size=1, preprocess=CFG, options={"progress": False})
    src.unlink()
    rc = cli(["verify", str(tmp_path / "m"), "--images", str(tiny.images)])
    assert rc == 2 and "--source" in capsys.readouterr().err
    rc = cli(["verify", str(tmp_path / "m"), "--images", str(tiny.images),
              "--source", str(tmp_path / "nope.onnx")])
    assert rc == 2
    other = tiny_model(dynamic=True, seed=1, images=0).onnx
    rc = cli(["verify", str(tmp_path / "m"), "--images", str(tiny.images),
              "--source", str(other)])
    assert rc == 7 and "sha256" in capsys.readouterr().err


def test_compare_reports_outputs_worst_images_and_layers(tiny, tmp_path, capsys):
    _build(tiny, tmp_path / "a", mode="force_float32")
    _build(tiny, tmp_path / "b", speed_check=False, allow_below_budget=True,
           float_first=0, float_last=0)
    from mnv3.compare import compare, top_layers

    files = sorted(tiny.images.iterdir())[:10]
    rep = compare(tmp_path / "a", tmp_path / "b", files, worst=3)
    o = rep.outputs
    assert o["count"] == 10 and 0 <= o["top1_agreement"] <= 1 and o["cosine_mean"] > 0.5
    assert len(rep.worst_images) == 3
    assert rep.layers and all({"layer", "rel_l2", "cosine", "max_abs_diff", "adds"} <= set(r)
                              for r in rep.layers)
    assert top_layers(rep.layers, 2)[0]["adds"] >= top_layers(rep.layers, 2)[1]["adds"]
    same = compare(tmp_path / "a", tmp_path / "a", files)
    assert same.outputs["top1_agreement"] == 1.0 and same.outputs["max_abs_diff"] == 0.0
    assert all(r["rel_l2"] == 0.0 for r in same.layers)
    rc = cli(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--images",
              str(tiny.images), "--num", "6", "--json", "-"])
    out = capsys.readouterr()
    assert rc == 0 and json.loads(out.out)["images"] == 6 and "top-1 agreement" in out.err


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")
def test_compare_two_openvino_builds_layer_by_layer(tiny, tmp_path):
    _build(tiny, tmp_path / "a", mode="force_float32", backend_name="openvino")
    _build(tiny, tmp_path / "b", speed_check=False, allow_below_budget=True,
           backend_name="openvino")
    from mnv3.compare import compare, top_layers

    files = sorted(tiny.images.iterdir())[:6]
    rep = compare(tmp_path / "a", tmp_path / "b", files)
    assert rep.layers and not rep.notes
    assert any(r["rel_l2"] > 0 for r in rep.layers)  # int8 differs somewhere
    assert top_layers(rep.layers, 1)[0]["adds"] == max(r["adds"] for r in rep.layers)
    same = compare(tmp_path / "a", tmp_path / "a", files)
    assert len(same.layers) == len(rep.layers)
    assert all(r["rel_l2"] == 0.0 and r["adds"] == 0.0 for r in same.layers)
    _build(tiny, tmp_path / "ort", mode="force_float32")  # a mixed pair: outputs only
    mixed = compare(tmp_path / "ort", tmp_path / "a", files)
    assert not mixed.layers and any("one engine's graph format" in n for n in mixed.notes)


def test_compare_refuses_different_networks(tiny, tmp_path):
    _build(tiny, tmp_path / "a", mode="force_float32")
    mnv3.build(tiny.onnx, tmp_path / "c", quant_mode="force_float32", shape_mutable=True,
               batch_size=1, preprocess=PreprocessCfg(resize=40, crop=SIZE),
               options={"progress": False})
    from mnv3.compare import compare

    rep = compare(tmp_path / "a", tmp_path / "c", sorted(tiny.images.iterdir())[:4])
    assert any("preprocess differently" in n for n in rep.notes)
    with pytest.raises(UsageError, match="needs images"):
        compare(tmp_path / "a", tmp_path / "c", [])


def test_infer_says_when_its_model_is_below_budget(tiny, tmp_path, capsys):
    _build(tiny, tmp_path / "m", speed_check=False, allow_below_budget=True,
           min_agreement=100, min_cosine=1.0)
    capsys.readouterr()
    assert cli(["infer", "--model", str(tmp_path / "m"), "--image-dir", str(tiny.images),
                "--output-dir", str(tmp_path / "out"), "--no-progress"]) == 0
    assert "BELOW its accuracy budget" in capsys.readouterr().out


def test_below_budget_message_offers_only_the_backends_other_calibration():
    """The torch backend offers entropy and minmax: a refused entropy build suggests minmax and
    never percentile (which it would refuse); a 16-bit float build suggests no calibration."""
    budget = gate.Budget(0.99, 0.99, False)
    fidelity = {"inputs": "200 images"}
    msg = gate.below_budget_error("qint8_mixed_float32", fidelity, budget, ["short"], "tried",
                                  ["minmax"])
    assert "calibrate another way (--calib-method minmax; more --calib-num)" in msg
    assert "percentile" not in msg
    msg = gate.below_budget_error("force_float16", fidelity, budget, ["short"], "tried", [])
    assert "calib" not in msg
