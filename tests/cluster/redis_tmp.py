"""TEMPORARY until branch scale's tests/cluster/conftest.py (redis_server) is merged."""

from collections.abc import Iterator


def run_redis(tmp_path: object) -> Iterator[str]:
    import socket
    import subprocess

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    for raw in proc.stdout:
        if b"Ready to accept connections" in raw:
            break
    yield f"redis://127.0.0.1:{port}"
    proc.terminate()
    proc.wait()
    proc.stdout.close()
