"""Where the derived index lives, and the few small files kept beside its tables.

By default the LanceDB tables are the data folder's `index/`. The process setting
`MEMENTO_INDEX_URI` puts them elsewhere: `s3://bucket/prefix` on S3 or any S3-compatible store
(MinIO, Ceph, R2...), or a local path. Other schemes (`gs://`, `az://`) are refused: LanceDB
could reach them, but nothing here is tested against them, and GCS and most others also speak
S3 through an endpoint.

The store's endpoint and credentials come from the variables every S3 client reads:
`AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`), `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_SESSION_TOKEN`, `AWS_REGION` (or `AWS_DEFAULT_REGION`) and `AWS_ALLOW_HTTP`. They are
passed to LanceDB explicitly as storage options: LanceDB reads some of them by itself, but which
ones has changed between its versions, and what the proxy does must not. Left unset, the
credentials are found as AWS's SDKs find them (instance profile, web identity).

Beside the tables live `layout.json` (which layout and vector size the tables have) and the
`vector_index*.json` files (the rows each table's IVF index was trained on); on S3 they are
objects under the same prefix, read and written through pyarrow's file systems. The lock files
are not here: they coordinate the processes of one machine and stay in the data folder.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from urllib.parse import urlsplit

from pyarrow import fs

from storage.errors import SetupError

INDEX_DIR = "index"
URI_SETTING = "MEMENTO_INDEX_URI"
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"", "0", "false", "no", "off"}


class IndexLocation:
    """A folder or an S3 prefix holding the index's tables, with what LanceDB needs to reach
    it. Its text is the URI, which never holds a credential (`storage_options` may)."""

    def __init__(self, uri: str, storage_options: Mapping[str, str] | None = None) -> None:
        self.uri = uri  # a folder's absolute path, or s3://bucket[/prefix]
        self.storage_options = dict(storage_options or {})
        self.bucket = urlsplit(uri).netloc if uri.startswith("s3://") else ""

    @classmethod
    def folder(cls, path: Path) -> IndexLocation:
        return cls(str(path.absolute()))

    @classmethod
    def from_env(cls, data_dir: Path) -> IndexLocation:
        """MEMENTO_INDEX_URI, else the data folder's `index/`. Raises SetupError, with a
        message that says what to fix, for a setting it cannot use."""
        raw = os.environ.get(URI_SETTING, "").strip()
        if not raw:
            return cls.folder(data_dir / INDEX_DIR)
        if "://" not in raw:
            return cls.folder(Path(raw).expanduser())
        return cls.s3(raw, os.environ)

    @classmethod
    def s3(cls, uri: str, env: Mapping[str, str]) -> IndexLocation:
        """An `s3://bucket/prefix` location, reached with the AWS_* variables of `env`."""
        parts = urlsplit(uri)
        if parts.scheme != "s3":
            raise SetupError(
                f"bad setting: {URI_SETTING} must be s3://bucket/prefix or a local path; "
                f"the {parts.scheme}:// scheme is not supported"
            )
        if "@" in parts.netloc or ":" in parts.netloc:
            # Said without the value: what precedes "@" may well be a secret.
            raise SetupError(
                f"bad setting: {URI_SETTING} must not hold credentials or a port; give the "
                "endpoint in AWS_ENDPOINT_URL and the keys in AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY"
            )
        if not _BUCKET.fullmatch(parts.netloc) or parts.query or parts.fragment:
            raise SetupError(
                f"bad setting: {URI_SETTING} must be s3://bucket/prefix with a valid bucket "
                f"name (3-63 of a-z, 0-9, '.', '-') and no query, got bucket {parts.netloc!r}"
            )
        options = _s3_options(env)
        if "." in parts.netloc and "aws_region" not in options:
            raise SetupError(  # its region cannot be found from its name: LanceDB refuses it
                f"bad setting: the bucket {parts.netloc!r} has dots in its name; set AWS_REGION"
            )
        prefix = parts.path.strip("/")
        location = f"s3://{parts.netloc}/{prefix}" if prefix else f"s3://{parts.netloc}"
        return cls(location, options)

    def recorded_as(self, data_dir: Path) -> str:
        """How the data folder records where its index is: its own `index/` by that relative
        name (the folder may be moved or mounted elsewhere), any other location by its URI."""
        return INDEX_DIR if self.uri == str((data_dir / INDEX_DIR).absolute()) else self.uri

    @property
    def is_local(self) -> bool:
        return not self.bucket

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"IndexLocation({self.uri!r})"  # never the storage options: they hold keys

    # -- the small files beside the tables (blocking: callers run them in a thread) -------------

    @cached_property
    def _files(self) -> tuple[fs.FileSystem, str]:
        """The file system and the base path the tables' folder or prefix is under."""
        if self.is_local:
            return fs.LocalFileSystem(), self.uri
        options = self.storage_options
        endpoint = options.get("aws_endpoint")
        region = options.get("aws_region")
        if region is None and endpoint is None:
            # AWS itself: LanceDB finds the bucket's region, pyarrow would assume us-east-1.
            region = fs.resolve_s3_region(self.bucket)
        s3 = fs.S3FileSystem(
            access_key=options.get("aws_access_key_id"),
            secret_key=options.get("aws_secret_access_key"),
            session_token=options.get("aws_session_token"),
            region=region,
            endpoint_override=endpoint,
            scheme=urlsplit(endpoint).scheme if endpoint else "https",
            connect_timeout=5,
            request_timeout=30,
            retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=3),
        )
        return s3, self.uri.removeprefix("s3://")

    def read_text(self, name: str) -> str | None:
        """The file `name`, or None when there is none."""
        files, base = self._files
        try:
            with files.open_input_stream(f"{base}/{name}") as stream:
                return bytes(stream.read()).decode("utf-8")
        except FileNotFoundError:
            return None

    def write_text(self, name: str, text: str) -> None:
        files, base = self._files
        if self.is_local:
            files.create_dir(base, recursive=True)
        with files.open_output_stream(f"{base}/{name}") as stream:
            stream.write(text.encode("utf-8"))

    def remove(self, name: str) -> None:
        """Remove the file `name` if it exists."""
        files, base = self._files
        with contextlib.suppress(FileNotFoundError):
            files.delete_file(f"{base}/{name}")

    def names(self) -> list[str]:
        """What lies directly under the location: files, and each table (`<name>.lance`)."""
        files, base = self._files
        selector = fs.FileSelector(base, allow_not_found=True)
        return [info.base_name for info in files.get_file_info(selector)]

    def holds_tables(self) -> bool:
        """Whether some table lies here (LanceDB keeps each as `<name>.lance`)."""
        return any(name.endswith(".lance") for name in self.names())

    def check(self) -> None:
        """Before serving: the bucket exists and these credentials reach it. A folder is made
        when first written, so it needs no check. Raises SetupError, one line, no secret."""
        if self.is_local:
            return
        where = self.storage_options.get("aws_endpoint", "S3")
        try:
            files, _ = self._files
            found = files.get_file_info(self.bucket).type != fs.FileType.NotFound
        except OSError as exc:
            reason = _without_secrets(str(exc).splitlines()[0], self.storage_options)
            raise SetupError(
                f"{URI_SETTING}: cannot reach bucket {self.bucket!r} at {where}: {reason}"
            ) from None
        if not found:
            raise SetupError(
                f"{URI_SETTING}: there is no bucket {self.bucket!r} at {where}; create it "
                "(the proxy does not create buckets) or correct the setting"
            )


def _s3_options(env: Mapping[str, str]) -> dict[str, str]:
    """LanceDB's storage options for S3, from the standard AWS_* variables."""
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    named = {
        "aws_endpoint": endpoint,
        "aws_access_key_id": env.get("AWS_ACCESS_KEY_ID"),
        "aws_secret_access_key": env.get("AWS_SECRET_ACCESS_KEY"),
        "aws_session_token": env.get("AWS_SESSION_TOKEN"),
        "aws_region": region,
    }
    options = {key: value.strip() for key, value in named.items() if value and value.strip()}
    if ("aws_access_key_id" in options) != ("aws_secret_access_key" in options):
        raise SetupError(
            "bad setting: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together; set both "
            "(or neither, to use the instance's or workload's credentials)"
        )
    allow_http = env.get("AWS_ALLOW_HTTP", "").strip().lower()
    if allow_http not in _TRUE | _FALSE:
        raise SetupError(f"bad setting: AWS_ALLOW_HTTP must be true or false, got {allow_http!r}")
    options["allow_http"] = "true" if allow_http in _TRUE else "false"
    if endpoint:
        scheme = urlsplit(options["aws_endpoint"]).scheme
        if scheme not in ("http", "https"):
            raise SetupError(
                f"bad setting: AWS_ENDPOINT_URL must be an http:// or https:// URL, got "
                f"{options['aws_endpoint']!r}"
            )
        if scheme == "http" and options["allow_http"] != "true":
            raise SetupError(
                "bad setting: AWS_ENDPOINT_URL is plain http://; set AWS_ALLOW_HTTP=true to "
                "send the index (and the request signatures) unencrypted to it"
            )
    return options


def _without_secrets(message: str, options: Mapping[str, str]) -> str:
    for key in ("aws_secret_access_key", "aws_session_token", "aws_access_key_id"):
        if options.get(key):
            message = message.replace(options[key], "***")
    return message
