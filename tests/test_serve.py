"""``mnv3 serve`` with the local engine (issue 18): answers equal ``mnv3 infer``'s, bad requests
get a 4xx JSON error and the service goes on, /healthz and /metadata, tuned settings, the CLI's
start and Ctrl-C, and the load generator (``mnv3 bench --serve``). All on loopback, port 0.
The Ray Serve engine's tests are in tests/reliability/test_serve_ray.py."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import mnv3
from mnv3.errors import UsageError
from mnv3.meta import PreprocessCfg, read_meta, write_meta
from tiny_onnx import SIZE

CFG = PreprocessCfg(resize=36, crop=SIZE)
MAX_BODY = 64 << 10


@pytest.fixture(scope="module")
def model(tiny_model, tmp_path_factory) -> dict:
    """A tiny classifier built with a fixed batch of 2 (so batches of 3 are split and padded)."""
    src = tiny_model(dynamic=True, images=6)
    out = tmp_path_factory.mktemp("serve") / "model"
    mnv3.build(src.onnx, out, quant_mode="force_float32", shape_mutable=False, batch_size=2,
               preprocess=CFG, calib_dir=src.images, options={"progress": False})
    return {"dir": out, "images": src.images, "files": src.files}


@pytest.fixture(scope="module")
def service(model):
    s = mnv3.serve(model["dir"], port=0, max_batch_size=3, batch_wait_ms=20,
                   max_body=MAX_BODY)
    yield s
    s.stop()


def call(url: str, method: str, path: str, body: bytes | None = None,
         headers: dict | None = None) -> tuple[int, dict]:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def post_image(url: str, path: Path) -> tuple[int, dict]:
    return call(url, "POST", "/predict", path.read_bytes(), {"Content-Type": "image/png"})


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0undary") -> bytes:
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += (f"--{boundary}\r\nContent-Disposition: {disp}\r\n"
                "Content-Type: image/png\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_answers_equal_infer_results_raw_and_multipart(service, model, tmp_path):
    """Concurrent requests (batched, split and padded for the fixed batch of 2) get the top-5
    and probabilities that mnv3 infer writes in results.jsonl for the same images."""
    from mnv3.data.datasets import load_dataset

    mnv3.infer(model["dir"], load_dataset(model["images"]), tmp_path / "out", progress=False)
    lines = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    expected = {x["file"]: {k: x[k] for k in ("top5", "names", "probs")} for x in lines}
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda p: post_image(service.url, p), model["files"]))
    for path, (status, answer) in zip(model["files"], answers):
        assert status == 200, answer
        assert answer == {"model": read_meta(model["dir"]).name, **expected[path.name]}
    first = model["files"][0]
    body = multipart([("note", None, b"x"), ("file", first.name, first.read_bytes())])
    status, answer = call(service.url, "POST", "/predict", body,
                          {"Content-Type": "multipart/form-data; boundary=b0undary"})
    assert status == 200 and answer["top5"] == expected[first.name]["top5"]


def _bad_requests(image: bytes) -> list[tuple[str, int, str, str, bytes | None, dict]]:
    mp = "multipart/form-data; boundary=b0undary"
    return [
        ("not an image type", 415, "POST", "/predict", b"hello", {"Content-Type": "text/plain"}),
        ("no content type", 415, "POST", "/predict", image, {}),
        ("not decodable", 422, "POST", "/predict", b"\x89PNG\r\n\x1a\n" + b"\0" * 40,
         {"Content-Type": "image/png"}),
        ("too large", 413, "POST", "/predict", b"\xff" * (MAX_BODY + 1),
         {"Content-Type": "image/jpeg"}),
        ("empty body", 400, "POST", "/predict", b"", {"Content-Type": "image/png"}),
        ("multipart without boundary", 400, "POST", "/predict", image,
         {"Content-Type": "multipart/form-data"}),
        ("multipart cut short", 400, "POST", "/predict",
         multipart([("file", "a.png", image)])[:-20], {"Content-Type": mp}),
        ("multipart with two files", 400, "POST", "/predict",
         multipart([("a", "a.png", image), ("b", "b.png", image)]), {"Content-Type": mp}),
        ("wrong method", 405, "GET", "/predict", None, {}),
        ("unknown path", 404, "POST", "/classify", image, {"Content-Type": "image/png"}),
    ]


@pytest.mark.parametrize("case", range(10))
def test_bad_requests_get_4xx_json_and_the_service_goes_on(service, model, case):
    image = model["files"][0].read_bytes()
    what, code, method, path, body, headers = _bad_requests(image)[case]
    status, answer = call(service.url, method, path, body, headers)
    assert status == code, (what, answer)
    assert set(answer) == {"error", "detail"} and answer["detail"], (what, answer)
    assert call(service.url, "GET", "/healthz")[0] == 200
    assert post_image(service.url, model["files"][1])[0] == 200


def test_chunked_body_is_refused_and_keep_alive_survives_a_refusal(service, model):
    u = urllib.parse.urlsplit(service.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Type", "image/png")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    conn.send(b"5\r\nhello\r\n0\r\n\r\n")
    resp = conn.getresponse()
    assert resp.status == 411 and json.loads(resp.read())["error"] == "length required"
    conn.close()
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)  # one connection:
    for body, ctype, code in ((b"hi", "text/plain", 415), (model["files"][0].read_bytes(),
                                                           "image/png", 200)):
        conn.request("POST", "/predict", body=body, headers={"Content-Type": ctype})
        resp = conn.getresponse()
        assert (resp.status, bool(resp.read())) == (code, True)
    conn.close()


def test_connections_beyond_the_cap_get_503_and_the_service_goes_on(model):
    """Idle connections hold their threads; one more than max_connections is refused at once
    with a JSON 503, and once they close the service answers again."""
    import socket

    from mnv3.serve_local import LocalService
    from mnv3.serve_protocol import Classifier

    session = mnv3.load(model["dir"], threads=1)
    s = LocalService(Classifier(session), host="127.0.0.1", port=0, max_batch=2, wait_s=0.0,
                     in_flight=1, max_body=MAX_BODY, max_connections=2)
    try:
        idle = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(2)]
        status, answer = call(s.url, "GET", "/healthz")
        assert status == 503 and answer["error"] == "too many connections"
        for sock in idle:
            sock.close()
        for _ in range(50):  # the idle connections' threads see the close and end
            try:
                if call(s.url, "GET", "/healthz")[0] == 200:
                    break
            except ConnectionError:
                pass
            time.sleep(0.05)
        assert post_image(s.url, model["files"][0])[0] == 200
    finally:
        s.stop()


def test_healthz_and_metadata(service, model):
    meta = read_meta(model["dir"])
    assert call(service.url, "GET", "/healthz") == (200, {"status": "ok", "model": meta.name})
    status, m = call(service.url, "GET", "/metadata")
    assert status == 200
    assert (m["model"], m["backend"], m["quant_mode"], m["compiled_sha256"]) == (
        meta.name, "onnxruntime", "force_float32", meta.compiled_sha256)
    assert (m["engine"], m["max_batch_size"], m["batch_size"], m["shape_mutable"]) == (
        "local", 3, 2, False)
    assert m["tuned"] is None and m["settings"] == "engine default"


def test_a_tuned_model_serves_with_its_tuned_settings(model, tmp_path):
    from mnv3.serving import startup_line

    tuned = tmp_path / "tuned"
    shutil.copytree(model["dir"], tuned)
    meta = read_meta(tuned)
    meta.extra["tuned"] = {"threads": 1, "streams": 3, "objective": "throughput"}
    write_meta(meta, tuned)
    s = mnv3.serve(tuned, port=0)
    try:
        m = s.metadata
        assert (m["threads"], m["in_flight"], m["settings"]) == (1, 3, "tuned (throughput)")
        assert len(s.batcher._threads) == 3 and s.classifier.session.in_flight == 3
        assert "1 thread(s) x 3 batch(es) in flight (tuned (throughput))" in startup_line(s)
        assert post_image(s.url, model["files"][0])[0] == 200
    finally:
        s.stop()
    s = mnv3.serve(tuned, port=0, threads=1)  # the caller's setting wins
    try:
        assert (s.metadata["in_flight"], s.metadata["settings"]) == (1, "--threads")
    finally:
        s.stop()


def test_a_tuned_fast_decode_serves_what_infer_computes_that_way(model, tmp_path):
    """Where 'mnv3 tune' recorded decode fast, the service decodes request bodies the fast way:
    its answers are infer's with --decode fast; decode="exact" serves infer's exact answers."""
    from mnv3.data.datasets import load_dataset
    from mnv3.serving import startup_line

    tuned = tmp_path / "tuned"
    shutil.copytree(model["dir"], tuned)
    meta = read_meta(tuned)
    meta.extra["tuned"] = {"threads": 1, "streams": 1, "objective": "latency", "decode": "fast"}
    write_meta(meta, tuned)
    samples = load_dataset(model["images"])
    expected = {}
    for decode in ("fast", "exact"):
        mnv3.infer(tuned, samples, tmp_path / decode, progress=False, decode=decode)
        lines = (tmp_path / decode / "results.jsonl").read_text().splitlines()
        expected[decode] = {x["file"]: x["probs"] for x in map(json.loads, lines)}
    assert expected["fast"] != expected["exact"]  # the two paths make other pixels here
    for decode, s in (("fast", mnv3.serve(tuned, port=0)),
                      ("exact", mnv3.serve(tuned, port=0, decode="exact"))):
        try:
            assert s.metadata["decode"] == decode
            assert ("decode fast" in startup_line(s)) is (decode == "fast")
            for path in model["files"]:
                status, answer = post_image(s.url, path)
                assert status == 200 and answer["probs"] == expected[decode][path.name]
        finally:
            s.stop()
    with pytest.raises(UsageError, match="decode must be one of"):
        mnv3.serve(tuned, port=0, decode="draft")


def test_a_model_below_its_budget_or_untrained_says_so(model, tmp_path):
    """Answers from such a model are not what a user would assume: /metadata names it (the CLI
    prints the same notes at start-up), as infer does beside its accuracy."""
    below = tmp_path / "below"
    shutil.copytree(model["dir"], below)
    meta = read_meta(below)
    meta.fidelity = {**(meta.fidelity or {}), "below_budget": ["top-1 agreement 97.0% < 99.0%"]}
    meta.source = {**meta.source, "random_seed": 0}
    write_meta(meta, below)
    s = mnv3.serve(below, port=0)
    try:
        notes = call(s.url, "GET", "/metadata")[1]["notes"]
    finally:
        s.stop()
    assert len(notes) == 2 and notes[0].startswith("UNTRAINED model")
    assert "BELOW its accuracy budget (top-1 agreement 97.0% < 99.0%)" in notes[1]


def test_cli_starts_prints_its_url_and_stops_on_ctrl_c(model):
    src = Path(mnv3.__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(src), os.environ.get("PYTHONPATH", "")) if p), OMP_NUM_THREADS="1")
    # Ctrl-C as from a terminal, even when the suite itself runs as a background job (a shell
    # starts those with SIGINT ignored, and a child keeps it ignored)
    proc = subprocess.Popen([sys.executable, "-m", "mnv3.cli.main", "serve", "--model",
                             str(model["dir"]), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = proc.stdout.readline()
        assert line.startswith("mnv3 serve: ") and "Ctrl-C stops" in line, proc.stderr.read()
        url = line.split(" at ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        assert call(url, "GET", "/healthz")[0] == 200
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "mnv3 serve: stopped" in out and "Traceback" not in err


def _cli(capsys, *argv) -> tuple[int, str, str]:
    from mnv3.cli.main import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_load_generator_measures_the_service(service, model, tmp_path, capsys):
    code, out, err = _cli(capsys, "bench", "--serve", service.url, "--concurrency", "3",
                          "--duration", "1", "--images", model["images"], "--json",
                          tmp_path / "load.json")
    assert code == 0, err
    r = json.loads((tmp_path / "load.json").read_text())
    assert r["errors"] == 0 and r["requests"] > 0 and r["requests_per_s"] > 0
    assert set(r["latency_ms"]) == {"p50", "p95", "p99", "max"} and "requests/s" in out
    assert r["model"] == read_meta(model["dir"]).name


def test_load_generator_and_service_refuse_what_they_should(model, capsys):
    code, _, err = _cli(capsys, "bench", "--serve", "http://10.1.2.3:8000", "--duration", "1")
    assert code == 2 and "not this machine" in err and "--allow-remote" in err
    code, _, err = _cli(capsys, "bench", "--serve", "http://127.0.0.1:1", "--duration", "1")
    assert code == 2 and "no mnv3 service answers" in err and "mnv3 serve" in err
    code, _, err = _cli(capsys, "bench", "--serve", "http://127.0.0.1:1", "--split", "2",
                        "--threads", "1")  # engine settings belong to the service
    assert code == 2 and "decide --threads, --split: drop them" in err
    code, _, err = _cli(capsys, "serve", "--model", model["dir"], "--replicas", "2")
    assert code == 2 and "options of --engine ray" in err
    code, _, err = _cli(capsys, "serve", "--model", model["dir"], "--max-batch-size", "0")
    assert code == 2 and "--max-batch-size must be at least 1" in err
    code, out, _ = _cli(capsys, "serve", "--help")
    assert code == 0 and "examples:" in out and "curl" in out


def test_request_parsing_refuses_any_garbage_with_a_4xx_only():
    """Fuzzed bodies and Content-Types: image_bytes returns bytes or raises a 4xx HttpError,
    never anything else (so no request can reach a 500 through parsing); a well-formed
    multipart body gives back its file's exact bytes, whatever they hold."""
    hypothesis = pytest.importorskip("hypothesis")  # the dev extra installs it
    from hypothesis import given, settings, strategies as st

    from mnv3.serve_protocol import HttpError, image_bytes

    kinds = st.sampled_from(["multipart/form-data; boundary=", "multipart/form-data",
                             "image/png", "text/plain", "", "multipart/form-data; boundary=\""])

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(kind=kinds, boundary=st.text(max_size=20), body=st.binary(max_size=600))
    def garbage(kind, boundary, body):
        try:
            assert isinstance(image_bytes(kind + boundary, body), bytes)
        except HttpError as e:
            assert 400 <= e.status < 500 and e.detail

    @settings(max_examples=200, deadline=None, derandomize=True)
    @given(data=st.binary(min_size=1, max_size=600))
    def round_trip(data):
        body = multipart([("file", "x.png", data)], boundary="zz-7f3a9c")
        assert image_bytes("multipart/form-data; boundary=zz-7f3a9c", body) == data

    assert hypothesis
    garbage()
    round_trip()
