"""MEMENTO_INDEX_URI and the AWS_* variables: what is accepted, what LanceDB is given, and a
setting that cannot work refused in one line that says what to fix, never showing a secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage.errors import SetupError
from storage.index_location import IndexLocation
from tests.harness import write_tenant
from tests.s3_server import S3Server

SECRET = "wJalrXUtnFEMI-not-a-real-secret"
AWS = {
    "AWS_ENDPOINT_URL": "https://objects.example.test",
    "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "AWS_REGION": "eu-west-3",
}


def test_unset_is_the_data_folders_index_and_a_path_is_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEMENTO_INDEX_URI", raising=False)
    default = IndexLocation.from_env(tmp_path / "data")
    assert (default.uri, default.is_local) == (str(tmp_path / "data" / "index"), True)
    monkeypatch.setenv("MEMENTO_INDEX_URI", str(tmp_path / "elsewhere"))
    assert IndexLocation.from_env(tmp_path / "data").uri == str(tmp_path / "elsewhere")


def test_an_s3_uri_gets_the_standard_variables_as_lancedbs_storage_options() -> None:
    location = IndexLocation.s3("s3://memento-index/prod/", {**AWS, "AWS_SESSION_TOKEN": "tok"})
    assert (location.uri, location.bucket, location.is_local) == (
        "s3://memento-index/prod",
        "memento-index",
        False,
    )
    assert location.storage_options == {
        "aws_endpoint": "https://objects.example.test",
        "aws_access_key_id": "AKIDEXAMPLE",
        "aws_secret_access_key": SECRET,
        "aws_session_token": "tok",
        "aws_region": "eu-west-3",
        "allow_http": "false",
    }
    assert SECRET not in repr(location) and SECRET not in str(location)
    # Nothing set: LanceDB finds credentials and region as AWS's SDKs do.
    assert IndexLocation.s3("s3://memento-index", {}).storage_options == {"allow_http": "false"}
    service_specific = {"AWS_ENDPOINT_URL_S3": "https://s3.example.test", **AWS}
    assert IndexLocation.s3("s3://b-1/p", service_specific).storage_options["aws_endpoint"] == (
        "https://s3.example.test"
    )


@pytest.mark.parametrize(
    ("uri", "env", "says"),
    [
        ("gs://memento-index/p", AWS, "the gs:// scheme is not supported"),
        (f"s3://AKIDEXAMPLE:{SECRET}@memento-index/p", AWS, "must not hold credentials"),
        ("s3://Bad_Bucket/p", AWS, "valid bucket name"),
        ("s3:///p", AWS, "valid bucket name"),
        (f"s3://memento-index/p?secret={SECRET}", AWS, "no query"),
        (
            "s3://memento-index/p",
            {**AWS, "AWS_ENDPOINT_URL": "http://minio:9000"},
            "AWS_ALLOW_HTTP",
        ),
        ("s3://memento-index/p", {**AWS, "AWS_ALLOW_HTTP": "maybe"}, "AWS_ALLOW_HTTP must be"),
        ("s3://memento-index/p", {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE"}, "go together"),
        ("s3://memento.index/p", {}, "set AWS_REGION"),
    ],
)
def test_a_setting_that_cannot_work_is_refused_saying_what_to_fix(
    uri: str, env: dict[str, str], says: str
) -> None:
    with pytest.raises(SetupError, match=says) as refused:
        IndexLocation.s3(uri, env)
    assert SECRET not in str(refused.value)


def test_the_check_finds_a_missing_bucket_and_an_unreachable_store(s3_server: S3Server) -> None:
    s3_server.location(s3_server.new_bucket()).check()
    with pytest.raises(SetupError, match="there is no bucket 'memento-missing'"):
        s3_server.location("memento-missing").check()
    closed = {**s3_server.env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    with pytest.raises(SetupError, match="cannot reach bucket") as refused:
        IndexLocation.s3("s3://memento-any/p", closed).check()
    assert s3_server.env["AWS_SECRET_ACCESS_KEY"] not in str(refused.value)


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("s3://memento-missing/index", "MEMENTO_INDEX_URI: there is no bucket 'memento-missing'"),
        ("az://container/index", "bad setting: MEMENTO_INDEX_URI must be s3://bucket/prefix"),
    ],
)
def test_serve_refuses_an_unusable_index_uri_in_one_line(
    s3_server: S3Server, policies_dir: Path, tmp_path: Path, uri: str, says: str
) -> None:
    write_tenant(policies_dir, "acme", "key-acme-0123456789", {"echo": {"model": "echo"}})
    command = [sys.executable, "-m", "proxy.cli", "serve", "--port", "0"]
    command += ["--policies", str(policies_dir), "--data-dir", str(tmp_path / "data")]
    env = {**os.environ, **s3_server.env, "MEMENTO_INDEX_URI": uri}
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"memento-proxy serve: {says}"), line
    assert s3_server.env["AWS_SECRET_ACCESS_KEY"] not in line
    assert not (tmp_path / "data").exists()  # nothing made for a start that never happened
