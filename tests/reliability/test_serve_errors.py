"""``mnv3 serve`` and ``mnv3 bench --serve`` keep the error contract (issue 18): a bad model,
flag or address is one line with its exit code and what to do, never a traceback, and no
service is left running."""

from __future__ import annotations

import socket

from .helpers import assert_user_error


def test_serve_refuses_a_missing_model_a_busy_port_and_bad_flags(cli, tiny, tmp_path):
    res = cli("serve", "--model", tmp_path / "nope", "--port", "0")
    assert_user_error(res, 7, r"does not exist", r"mnv3 build")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = cli("serve", "--model", tiny["model"], "--port", port)
    assert_user_error(res, 2, rf"cannot listen on 127\.0\.0\.1:{port}", r"--port")
    assert_user_error(cli("serve", "--model", tiny["model"], "--port", "70000"), 2,
                      r"--port must be 0\.\.65535", r"--port")
    assert_user_error(cli("serve", "--model", tiny["model"], "--batch-wait-ms", "-1"), 2,
                      r"--batch-wait-ms must be 0\.\.10000", r"--batch-wait-ms")
    assert_user_error(cli("serve", "--model", tiny["model"], "--address", "auto"), 2,
                      r"--address and --replicas", r"--engine ray")


def test_bench_serve_refuses_remote_and_bad_bounds(cli):
    assert_user_error(cli("bench", "--serve", "http://192.0.2.1:8000"), 2,
                      r"not this machine", r"--allow-remote")
    assert_user_error(cli("bench", "--serve", "ftp://127.0.0.1/"), 2,
                      r"must be an http:// URL", r"http://127\.0\.0\.1:8000")
    assert_user_error(cli("bench", "--serve", "http://127.0.0.1:1", "--concurrency", "0"), 2,
                      r"--concurrency must be 1\.\.256", r"--concurrency")
    assert_user_error(cli("bench", "--serve", "http://127.0.0.1:1", "--iterations", "5"), 2,
                      r"drop --model and --iterations", r"--duration")
    assert_user_error(cli("bench"), 2, r"--model DIR", r"--serve URL")
