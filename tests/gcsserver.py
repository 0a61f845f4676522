"""A real GCS JSON API on 127.0.0.1 for the tests: gcp-storage-emulator's server in a subprocess,
on a free port, in memory (no mocks inside the test's process).

The project reaches it through the storage URI alone, with options pyarrow's GcsFileSystem reads
from the URI itself: `gs://anonymous@BUCKET/PREFIX?scheme=http&endpoint_override=127.0.0.1:PORT`.
`anonymous@` because the Google SDK inside pyarrow otherwise looks for credentials (and, with none
on this machine, retries for minutes); `retry_limit_seconds` so a mistake fails in seconds.
The test's own checks go through the emulator's JSON API with urllib, not through pyarrow, so a
bug in how the project drives pyarrow cannot hide itself.

Where the emulator is not GCS (2026.7.19): it ignores `includeTrailingDelimiter`, so a one-level
pyarrow listing shows no subdirectory even where a marker object exists (real GCS returns the
marker). core.files infers directories from the objects' names, which holds on both; a test of a
listing made by pyarrow alone (Ray's, say) would see less here than on GCS.
"""

import contextlib
import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from s3server import free_port


@dataclass
class GcsServer:
    endpoint: str  # http://127.0.0.1:PORT

    scheme = "gs"

    def uri(self, bucket: str, path: str = "") -> str:
        """What a user writes as `storage:` to reach BUCKET/PATH on this server."""
        host = self.endpoint.removeprefix("http://")
        return f"gs://anonymous@{bucket}/{path}?scheme=http&endpoint_override={host}&retry_limit_seconds=5"

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.endpoint}/storage/v1/{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
        return json.loads(text) if text.strip() else {}

    def new_bucket(self) -> str:
        name = f"mft-{uuid.uuid4().hex[:12]}"
        self._call("POST", "b", {"name": name})  # the JSON API's buckets.insert
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        names, token = [], ""
        while True:
            query = urllib.parse.urlencode({"prefix": prefix, **({"pageToken": token} if token else {})})
            page = self._call("GET", f"b/{bucket}/o?{query}")
            names += [o["name"] for o in page.get("items", [])]
            if not (token := page.get("nextPageToken")):
                return sorted(names)

    def delete_bucket(self, bucket: str) -> None:
        for key in self.keys(bucket):
            self._call("DELETE", f"b/{bucket}/o/{urllib.parse.quote(key, safe='')}")
        self._call("DELETE", f"b/{bucket}")


@contextlib.contextmanager
def gcs_server() -> Iterator[GcsServer]:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
                                "--port", str(port), "--in-memory", "--quiet"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/", timeout=2)  # its health check answers "OK"
                break
            except OSError:
                assert process.poll() is None, "gcp-storage-emulator did not start"
                assert time.monotonic() < deadline, "gcp-storage-emulator did not answer in 60 s"
                time.sleep(0.2)
        yield GcsServer(endpoint)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="session")
def gcs():
    """The GCS server: its URIs carry the endpoint. A credentials file that does not exist makes a
    URI that lost its options fail at once, where the SDK would look for Google's credentials for
    minutes (and could reach Google with a developer's own)."""
    pytest.importorskip("gcp_storage_emulator", reason="gcp-storage-emulator is in the test extra")
    with gcs_server() as server, pytest.MonkeyPatch.context() as patch:
        patch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/mft-tests-use-no-google-credentials.json")
        yield server
