"""An S3-compatible server on loopback for the tests of the index on object storage: moto's
server mode, a real S3 HTTP API, in a subprocess the test session starts and stops.

A subprocess rather than moto's in-process `ThreadedMotoServer`: the server's request handling
then holds no lock of the test process (its interpreter, moto's global state), a test that
stalls the process does not stall the store it talks to, and a proxy run as a subprocess of
its own reaches it the same way LanceDB in the test process does. The cost is its start-up
(about a second, once per session). Each test gets a bucket of its own, so tests stay
independent; boto3 (which moto brings) looks at the buckets as an outside observer would.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from storage.index_location import IndexLocation
from tests.harness import free_port


class S3Server:
    """`moto_server` on a free 127.0.0.1 port; `env` are the AWS_* variables that reach it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "memento-test",
            "AWS_SECRET_ACCESS_KEY": "memento-test-secret",
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in __exit__)
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> S3Server:
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self._process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            if self._process.poll() is not None:
                self._log.seek(0)
                raise RuntimeError(f"moto_server exited: {self._log.read().decode()}")
            try:
                if httpx.get(self.endpoint, timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("moto_server did not answer in 60 s")
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=30)
        self._log.close()

    def new_bucket(self) -> str:
        """A new, empty bucket of a name no other test uses."""
        name = f"memento-{uuid.uuid4().hex[:16]}"
        _client(self.location(name)).create_bucket(Bucket=name)
        return name

    def location(self, bucket: str, prefix: str = "index") -> IndexLocation:
        return IndexLocation.s3(f"s3://{bucket}/{prefix}", self.env)


def stored_files(location: IndexLocation) -> dict[str, bytes]:
    """Every file of the index at `location`, read as an outside observer (a folder walk, or
    boto3 over the bucket), by its path under the location."""
    if location.is_local:
        root = Path(location.uri)
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    client, prefix = _client(location), _key(location, "")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=prefix)
    keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
    return {
        key.removeprefix(prefix): client.get_object(Bucket=location.bucket, Key=key)["Body"].read()
        for key in keys
    }


def _client(location: IndexLocation) -> Any:
    import boto3  # type: ignore[import-untyped]

    options = location.storage_options
    return boto3.client(
        "s3",
        endpoint_url=options["aws_endpoint"],
        aws_access_key_id=options["aws_access_key_id"],
        aws_secret_access_key=options["aws_secret_access_key"],
        region_name=options["aws_region"],
    )


def _key(location: IndexLocation, name: str) -> str:
    """The object key of the file `name` under an S3 location."""
    prefix = location.uri.removeprefix(f"s3://{location.bucket}").strip("/")
    return f"{prefix}/{name}" if prefix else name


def remove_files(location: IndexLocation, under: str) -> list[str]:
    """Delete the index's files whose path under the location starts with `under`, as an
    outside hand would (a lost object, an operator's mistake); returns their paths."""
    gone = [name for name in stored_files(location) if name.startswith(under)]
    for name in gone:
        if location.is_local:
            (Path(location.uri) / name).unlink()
        else:
            _client(location).delete_object(Bucket=location.bucket, Key=_key(location, name))
    return gone
