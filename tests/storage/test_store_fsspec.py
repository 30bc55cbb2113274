"""The cohort-store conformance suite on a real S3-compatible server (moto_server on 127.0.0.1)."""
from __future__ import annotations

import itertools
import uuid

import pytest
from s3_server import moto_server
from store_conformance import StoreConformance

s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto")


@pytest.fixture(scope="module")
def s3_endpoint():
    """Start moto_server on a free local port for this module; yield its URL."""
    with moto_server() as url:
        yield url


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
