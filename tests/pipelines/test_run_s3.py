"""run_cohort on a store in S3 (moto_server on 127.0.0.1): worker processes open it by URL.

The S3 endpoint and credentials reach the workers the way they would on a
cluster: through the standard AWS environment variables (botocore reads
``AWS_ENDPOINT_URL``), since tasks open the store from its URL alone.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

import run_test_stages as rts
from petcohort.pipelines.run import run_cohort

s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def s3_env(monkeypatch):
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
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": url}.items():
            monkeypatch.setenv(k, v)
        s3fs.S3FileSystem.clear_instance_cache()
        bucket = f"petcohort-{uuid.uuid4().hex[:8]}"
        s3fs.S3FileSystem().call_s3("create_bucket", Bucket=bucket)
        yield bucket
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(autouse=True)
def stages():
    with rts.registered():
        yield


@pytest.mark.slow
def test_run_on_s3_store_matches_local(tmp_path, s3_env):
    from distributed import Client, LocalCluster

    url = f"s3://{s3_env}/cohort"
    store = rts.make_cohort(url, bad=("P-0000000001-T0",))
    ref = rts.make_cohort(tmp_path / "local", bad=("P-0000000001-T0",))
    # the cluster starts after the environment is set, so its worker processes inherit it
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster, set_as_default=False) as client:
        s = run_cohort(url, stages=list(rts.NAMES), client=client)
        run_cohort(ref.url, stages=list(rts.NAMES), client=client)
        again = run_cohort(url, stages=rts.MAIN, client=client)
    assert len(s.done) == 25 and len(s.failed) == 8
    assert rts.results(store) == rts.results(ref)
    assert again.done == [] and len(again.skipped) == 15
