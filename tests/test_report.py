"""report: the two seed tables, the baselines table, report.json round trip, files written."""

from __future__ import annotations

import json

from mnv3.bench import PERCENTILE_DEFINITION, BenchResult, LatencyStats
from mnv3.report import (
    BASELINE_ORT,
    BASELINE_TORCH,
    BaselineRow,
    ModelRow,
    RunReport,
    accuracy_table,
    baselines_table,
    builds_table,
    format_bench,
    markdown,
    performance_table,
    write_report,
)


def bench(model, ips, batch, mode="force_float32"):
    lat = 1e3 * batch / ips
    return BenchResult(
        model=model, backend="onnxruntime", backend_version="1.32.0", quant_mode=mode,
        shape_mutable=False, batch=batch, threads=2, streams=1, warmup=5, iterations=100,
        duration_s=100 * lat / 1e3, stop="iterations=100", throughput_ips=ips,
        throughput_qps=ips / batch,
        latency_ms=LatencyStats(lat * 0.9, lat, lat, lat * 1.1, lat * 1.2, lat * 1.5, lat * 2),
        load_time_ms=12.0, first_run_ms=3.0, percentile_definition=PERCENTILE_DEFINITION,
        system={"cpu_model": "Test CPU", "cores": {"physical": 2, "usable": 2}},
    )


def make_report(untrained=True) -> RunReport:
    rows = []
    for mode, speed in (("force_float32", 1000.0), ("force_float16", 400.0)):
        for b in (1, 8):
            name = f"{mode}_false_{b}"
            rows.append(ModelRow(name=name, quant_mode=mode, shape_mutable=False, batch=b,
                                 model_dir=f"data/models/{name}",
                                 accuracy={"top1": 0.25, "top5": 0.5, "agreement": 0.75,
                                           "images": 4},
                                 bench=bench(name, speed * (1 + b / 8), b, mode)))
    baselines = [BaselineRow(n, b, bench(n, s * (1 + b / 8), b))
                 for n, s in ((BASELINE_TORCH, 500.0), (BASELINE_ORT, 800.0)) for b in (1, 8)]
    return RunReport(model="mobilenetv3-small", untrained=untrained, device="CPU Test x2",
                     rows=rows, baselines=baselines, dataset={"image_dir": "demo", "images": 4},
                     config={"backend": "onnxruntime", "threads": 2, "rounds": 1},
                     notes=["fp16 is slow on the ORT CPU provider"], timings={"total": 12.0})


def test_performance_table_has_the_seed_columns():
    t = performance_table(make_report()).splitlines()
    assert t[0] == ("| Model | QuantMode_ShapeMutable_BatchSize | Throughput (images/s) | "
                    "min-max of 1 round | Latency Avg (ms) | 95% (ms) | 99% (ms) | device |")
    assert len(t) == 2 + 4
    assert "| mobilenetv3-small | force_float32_false_8 | 2000.0 | 2000.0-2000.0 | 4.000 | " \
           "4.800 | 6.000 | CPU Test x2 |" in t


def test_accuracy_table_marks_untrained():
    t = accuracy_table(make_report()).splitlines()
    assert t[0] == ("| Model | QuantMode_ShapeMutable_BatchSize | top1 | top5 | "
                    "agreement with fp32 | device |")
    assert "25.00% (untrained)" in t[2] and "75.00%" in t[2]
    assert "(untrained)" not in accuracy_table(make_report(untrained=False))


def test_two_backends_get_a_backend_column_and_ratios_per_row():
    rep = make_report(untrained=False)
    for row in rep.rows[2:]:  # the force_float16 rows become OpenVINO's force_float32
        row.backend, row.quant_mode = "openvino", "force_float32"
        row.name = row.name.replace("float16", "float32")
    perf = performance_table(rep).splitlines()
    assert perf[0].startswith("| Model | Backend | QuantMode_ShapeMutable_BatchSize | ")
    assert "| mobilenetv3-small | openvino | force_float32_false_8 | 800.0 |" in perf[5]
    assert accuracy_table(rep).splitlines()[0].startswith("| Model | Backend | QuantMode")
    t = baselines_table(rep)
    assert "| onnxruntime | force_float32_false_8 | 2000.0 | 1000.0 | 2.00x |" in t
    assert "| openvino | force_float32_false_8 | 800.0 | 1000.0 | 0.80x |" in t
    assert "| openvino | force_float32_false_1 |" in builds_table(rep)
    assert "- backends: onnxruntime 1.32.0, openvino 1.32.0," in markdown(rep)
    again = RunReport.from_dict(rep.to_dict())  # the backend survives report.json
    assert [r.backend for r in again.rows] == ["onnxruntime"] * 2 + ["openvino"] * 2


def test_baselines_table_ratios():
    t = baselines_table(make_report())
    # force_float32 batch 8: 2000 images/s vs torch 1000 (2.00x) and plain ORT 1600 (1.25x)
    assert "| force_float32_false_8 | 2000.0 | 1000.0 | 2.00x | 1600.0 | 1.25x |" in t


def test_markdown_is_loud_about_untrained():
    md = markdown(make_report())
    assert "UNTRAINED" in md.splitlines()[2]
    assert "## Performance" in md and "## Accuracy" in md and "baselines" in md
    assert "Hyndman" in md  # the percentile definition is stated


def test_json_round_trip():
    rep = make_report()
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["schema"] == "mnv3.run/1"
    assert RunReport.from_dict(d).to_dict() == d


def test_write_report_writes_three_files(tmp_path):
    paths = write_report(make_report(), tmp_path / "out")
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"report.md", "report.json",
                                                              "report.png"}
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(paths["json"].read_text())["rows"][0]["bench"]["schema"] == "mnv3.bench/1"


def test_format_bench_block():
    text = format_bench(bench("force_float32_false_8", 2000.0, 8))
    assert "2000.0 images/s" in text and "250.0 queries/s" in text
    assert "p95" in text and "first run" in text and "load" in text and "Test CPU" in text


def test_builds_table_reports_cold_start_apart():
    rep = make_report()
    rep.rows[0].reused = True
    rep.rows[1].build_s = 4.25
    t = builds_table(rep).splitlines()
    assert "| force_float32_false_1 | reused | 12.0 | 3.00 |" in t[2]
    assert "| force_float32_false_8 | 4.2 s |" in t[3] or "| force_float32_false_8 | 4.3 s |" in t[3]


# ------------------------------------------------------------------------ issue 13
def _rounds(ips: list[float], batch=8, mode="force_float32"):
    """A merged result of len(ips) rounds (as run's bench_batch makes them)."""
    from mnv3.bench import merge_results

    results = []
    for v in ips:
        r = bench("m", v, batch, mode)
        r.samples = [batch / v] * 10  # 10 queries at this speed
        r.duration_s = 10 * batch / v
        results.append(r)
    return merge_results(results)


def test_tables_quote_the_median_round_and_the_range_of_all_rounds():
    """Two identical runs differed by up to 30% in a cell: give the median and the spread."""
    rep = make_report()
    rep.config["rounds"] = 5
    rep.rows[1].bench = _rounds([380.0, 270.0, 390.0, 375.0, 385.0])
    torch_rounds = _rounds([190.0, 135.0, 195.0, 150.0, 192.5])
    rep.baselines = [b for b in rep.baselines if not (b.name == BASELINE_TORCH and b.batch == 8)]
    rep.baselines.append(BaselineRow(BASELINE_TORCH, 8, torch_rounds))
    perf = performance_table(rep)
    assert "| Throughput (images/s) | min-max of 5 rounds |" in perf
    assert "| force_float32_false_8 | 380.0 | 270.0-390.0 |" in perf
    # per-round ratios 2.0, 2.0, 2.0, 2.5, 2.0: the median, not a ratio of pooled figures
    assert "| force_float32_false_8 | 380.0 | 190.0 | 2.00x |" in baselines_table(rep)
    md = markdown(rep)
    assert "ran in 5 round(s) interleaved" in md and "median round" in md
    d = rep.to_dict()["rows"][1]["bench"]
    assert d["rounds_ips"] == [380.0, 270.0, 390.0, 375.0, 385.0]
    assert BenchResult.from_dict(d).median_ips() == 380.0


def test_model_notes_name_the_models_they_hold_for():
    """report.md printed 'float16: none' and 'float16: Reshape' as two bare notes: they hold
    for different modes, so each note now says for which."""
    from mnv3.pipeline_notes import model_notes

    rep = make_report()
    for r in rep.rows:
        r.notes = [f"note of {r.quant_mode}", "shared"]
    assert model_notes(rep.rows) == [
        "force_float32 (batch 1, 8): note of force_float32",
        "force_float32 (batch 1, 8); force_float16 (batch 1, 8): shared",
        "force_float16 (batch 1, 8): note of force_float16"]


def test_a_mixed_precision_op_is_listed_once():
    from mnv3.backends.onnxruntime import precision_notes
    from mnv3.quant_mode import QuantMode

    fp16, int8 = precision_notes(QuantMode.INT8_FLOAT16, {
        "Conv": "float32", "QLinearConv": "int8", "Reshape": "float16",
        "Transpose": "mixed(float32:9,int8:9)"})
    assert "int8 kernels: QLinearConv; still float: Conv, Reshape; mixed: Transpose " \
           "(float32:9, int8:9)" in int8
    assert fp16.count("Transpose") == 1 and "float16: Reshape;" in fp16


def test_png_palettes_do_not_collide_and_accuracy_names_its_batch():
    """report.png: the agreement bars shared a colour with a throughput series, and the
    accuracy panel did not say which batch it shows."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    from mnv3.report_plot import draw_report

    rep = make_report(untrained=False)
    extra = []
    for row in rep.rows:  # 2 backends x 3 modes: six throughput series
        extra.append(ModelRow(**{**row.__dict__, "backend": "openvino"}))
        if row.quant_mode == "force_float32":
            for backend in ("onnxruntime", "openvino"):
                extra.append(ModelRow(**{**row.__dict__, "backend": backend,
                                         "quant_mode": "qint8_mixed_float16",
                                         "name": f"qint8_mixed_float16_false_{row.batch}"}))
    rep.rows += extra
    fig = draw_report(rep)
    try:
        ax_t, ax_a = fig.axes

        def colours(ax):
            return {to_hex(c.get_facecolor()) for c in ax.containers
                    for c in [c.patches[0]]}

        series = [to_hex(c.patches[0].get_facecolor()) for c in ax_t.containers]
        assert len(series) == len(set(series)) == 6 + 2  # six series + two baselines, all apart
        assert colours(ax_a).isdisjoint(series)
        assert "batch 1" in ax_a.get_title()
    finally:
        plt.close(fig)
