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
                    "Latency Avg (ms) | 95% (ms) | 99% (ms) | device |")
    assert len(t) == 2 + 4
    assert "| mobilenetv3-small | force_float32_false_8 | 2000.0 | 4.000 | 4.800 | 6.000 | " \
           "CPU Test x2 |" in t


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
