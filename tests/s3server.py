"""A real S3 API on 127.0.0.1 for the tests: moto's server in a subprocess, on a free port,
started and stopped by the test that needs it (no mocks inside the test's process).

The sweep and its Ray workers reach it the way they would reach AWS: through the standard
variables the AWS SDK inside pyarrow reads (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), nothing
of the project's own.
"""

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


@dataclass
class S3Server:
    endpoint: str
    env: dict[str, str]  # the variables a process needs to reach it (added to os.environ)

    scheme = "s3"

    def uri(self, bucket: str, path: str = "") -> str:
        """What a user writes as `storage:` to reach BUCKET/PATH (the endpoint comes from `env`)."""
        return f"s3://{bucket}/{path}"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def new_bucket(self) -> str:
        name = f"mft-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def delete_bucket(self, bucket: str) -> None:
        """Empty the bucket and delete it, again while a running sweep adds objects in between."""
        import botocore.exceptions

        client = self.client()
        for _ in range(50):
            for key in self.keys(bucket):
                client.delete_object(Bucket=bucket, Key=key)
            try:
                client.delete_bucket(Bucket=bucket)
                return
            except botocore.exceptions.ClientError as exc:
                if exc.response["Error"]["Code"] != "BucketNotEmpty":
                    raise
        raise AssertionError(f"{bucket} never emptied")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)
                break
            except OSError:
                assert process.poll() is None, "moto's server did not start"
                assert time.monotonic() < deadline, "moto's server did not answer in 60 s"
                time.sleep(0.2)
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
        yield S3Server(endpoint, env)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="session")
def s3():
    """The S3 server, its variables set in this process too (the test's own reads go through pyarrow)."""
    pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
    with s3_server() as server, pytest.MonkeyPatch.context() as patch:
        for key, value in server.env.items():
            patch.setenv(key, value)
        yield server
