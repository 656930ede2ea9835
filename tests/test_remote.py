"""Data and models shared through a DVC remote: a local folder and S3 (moto's server on loopback).

After `dvc push`, a fresh clone with `dvc pull` has every output: `dvc status` is clean and
`dvc repro` runs nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from glioseg.config.compose import compose_params
from tests.test_pipeline import free_port, make_project, project_env, run, wait_for
from tests.test_team import TEAM

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared-project")
    env = project_env(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    make_project(root, env, compose_params(TEAM))
    run(["dvc", "repro"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "results"], root, env)
    return root, env


def push_then_clone_and_pull(root: Path, env: dict[str, str], remote: list[list[str]], clone: Path) -> Path:
    for command in remote:
        run(command, root, env)
    run(["git", "commit", "-qam", "remote"], root, env)
    pushed = run(["dvc", "push"], root, env).stdout
    assert "pushed" in pushed, pushed
    run(["git", "clone", "-q", str(root), str(clone)], root.parent, env)
    run(["dvc", "pull"], clone, env)
    return clone


def assert_up_to_date(clone: Path, env: dict[str, str]) -> None:
    assert "up to date" in run(["dvc", "status"], clone, env).stdout
    output = run(["dvc", "repro"], clone, env).stdout
    assert "Running stage" not in output, output
    assert (clone / "models/model.pt").stat().st_size > 0 and (clone / "data/cache/slices.npz").is_file()


def test_a_local_folder_remote_shares_data_and_models(project, tmp_path):
    root, env = project
    store = tmp_path / "dvc-store"
    clone = push_then_clone_and_pull(
        root, env, [["dvc", "remote", "add", "-f", "-d", "shared", str(store)]], tmp_path / "clone"
    )
    assert_up_to_date(clone, env)


@pytest.fixture
def s3_endpoint(tmp_path):
    """moto's S3 server on a free loopback port, stopped by its process id."""
    port = free_port()
    log = (tmp_path / "moto.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/moto-api/", process, timeout=60, log=tmp_path / "moto.log")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


def test_an_s3_remote_shares_data_and_models(project, s3_endpoint, tmp_path):
    import boto3

    root, env = project
    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket="glioseg-team")
    clone = push_then_clone_and_pull(
        root,
        env,
        [
            ["dvc", "remote", "add", "-f", "-d", "s3", "s3://glioseg-team/dvc"],
            ["dvc", "remote", "modify", "s3", "endpointurl", s3_endpoint],
        ],
        tmp_path / "clone",
    )
    assert_up_to_date(clone, env)
