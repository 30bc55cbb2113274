"""The cohort-store conformance suite on a real S3-compatible server (moto_server on 127.0.0.1)."""
from __future__ import annotations

import itertools
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from store_conformance import StoreConformance

s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """Start moto_server on a free local port for this module; yield its URL."""
    exe = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    if not Path(exe).exists():
        pytest.skip("moto_server executable not found")
    port = _free_port()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.skip("moto_server did not start")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def s3_options(s3_endpoint):
    return {"key": "testing", "secret": "testing",
            "client_kwargs": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"}}


@pytest.fixture(scope="module")
def bucket(s3_options):
    name = f"petcohort-{uuid.uuid4().hex[:8]}"
    fs = s3fs.S3FileSystem(**s3_options)
    fs.call_s3("create_bucket", Bucket=name)
    return name


class TestS3Store(StoreConformance):
    round_trip_examples = 10   # each example is ~10 HTTP requests to moto
    @pytest.fixture
    def storage_options(self, s3_options):
        return s3_options

    @pytest.fixture
    def make_url(self, bucket):
        counter = itertools.count()
        run = uuid.uuid4().hex[:8]
        return lambda: f"s3://{bucket}/{run}/store{next(counter)}"
