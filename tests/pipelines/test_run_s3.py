"""run_cohort on a store in S3 (moto_server on 127.0.0.1): worker processes open it by URL.

The S3 endpoint and credentials reach the workers the way they would on a
cluster: through the standard AWS environment variables (botocore reads
``AWS_ENDPOINT_URL``), since tasks open the store from its URL alone.
"""
from __future__ import annotations

import uuid

import pytest

import run_test_stages as rts
from s3_server import moto_server
from petcohort.pipelines.run import run_cohort

s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto")


@pytest.fixture
def s3_env(monkeypatch):
    with moto_server() as url:
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": url}.items():
            monkeypatch.setenv(k, v)
        s3fs.S3FileSystem.clear_instance_cache()
        bucket = f"petcohort-{uuid.uuid4().hex[:8]}"
        s3fs.S3FileSystem().call_s3("create_bucket", Bucket=bucket)
        try:
            yield bucket
        finally:
            s3fs.S3FileSystem.clear_instance_cache()


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
