"""deploy/launch/: each launch file parsed or dry-run (no docker, kubectl or cloud needed)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "deploy" / "launch"
yaml = pytest.importorskip("yaml", reason="PyYAML (installed with apache-beam) parses the manifests")


def bash(script, env=None, args=()):
    full_env = {k: v for k, v in os.environ.items() if k not in ("EXPORT_BASE", "DRY_RUN", "IMAGE", "DATA")}
    full_env.update(env or {})
    return subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True,
                          env=full_env, cwd=REPO, timeout=60)


def fake_export(base: pathlib.Path, versions=("1", "10", "9")) -> pathlib.Path:
    for v in versions:
        (base / v).mkdir(parents=True)
        (base / v / "saved_model.pb").write_bytes(b"")
    (base / "tmp-123").mkdir()
    return base


# --- TF Serving container -------------------------------------------------------------------


def test_tf_serving_dry_run_prints_the_docker_command(tmp_path):
    base = fake_export(tmp_path / "export")
    result = bash("tf_serving.sh", {"DRY_RUN": "1", "EXPORT_BASE": str(base)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"+ docker run --rm -p 8501:8501 --mount type=bind,source={base},target=/models/sketch_rnn "
        "-e MODEL_NAME=sketch_rnn tensorflow/serving")
    assert "serving version 10 of" in result.stderr  # numeric order, not text order
    # The base dir may be relative and given as the first argument; name and port are settable.
    result = bash("tf_serving.sh", {"DRY_RUN": "1", "MODEL_NAME": "pig", "PORT": "9000"},
                  args=[os.path.relpath(base, REPO)])
    assert result.returncode == 0, result.stderr
    words = shlex.split(result.stdout.strip()[2:])
    assert words[:5] == ["docker", "run", "--rm", "-p", "9000:8501"]
    assert f"type=bind,source={base},target=/models/pig" in words and "MODEL_NAME=pig" in words


@pytest.mark.parametrize("case", ["unset", "missing", "version dir", "empty"])
def test_tf_serving_refuses_a_wrong_export_dir(tmp_path, case):
    base = fake_export(tmp_path / "export")
    env = {"DRY_RUN": "1", "EXPORT_BASE": {"unset": "", "missing": str(tmp_path / "nope"),
                                           "version dir": str(base / "10"), "empty": str(tmp_path)}[case]}
    result = bash("tf_serving.sh", env)
    assert result.returncode == 2 and result.stdout == ""
    message = {"unset": "set EXPORT_BASE", "missing": "not a directory", "version dir": "pass its parent",
               "empty": "no version directory"}[case]
    assert message in result.stderr


# --- multi-worker training on Kubernetes ----------------------------------------------------


def render_k8s(**env):
    values = {"DRY_RUN": "1", "IMAGE": "gcr.io/p/sketch-rnn:1", "DATA": "gs://b/data", "MODEL_DIR": "gs://b/run"}
    values.update(env)
    result = bash("k8s_train.sh", values)
    assert result.returncode == 0, result.stderr
    return list(yaml.safe_load_all(result.stdout))


def test_k8s_manifest_has_one_tf_config_per_worker(tmp_path):
    service, job = render_k8s(NUM_WORKERS="3", STEPS="5000")
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert job["kind"] == "Job" and job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 3
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
    container, = pod["containers"]
    assert container["image"] == "gcr.io/p/sketch-rnn:1"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {"NUM_WORKERS": "3", "DATA": "gs://b/data", "MODEL_DIR": "gs://b/run", "STEPS": "5000"}
    # Run the container's script for each index with a stand-in `sketch-rnn` that prints what it got.
    fake = tmp_path / "bin" / "sketch-rnn"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "ARGS $*"\necho "CONFIG $TF_CONFIG"\n')
    fake.chmod(0o755)
    from trainer.cli import build_parser

    for index in range(3):
        run_env = {"PATH": f"{fake.parent}:/usr/bin:/bin", "JOB_COMPLETION_INDEX": str(index), **env}
        result = subprocess.run(container["command"] + container["args"], env=run_env, capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line[:4] in ("ARGS", "CONF"))
        tf_config = json.loads(lines["CONFIG"])
        assert tf_config == {"cluster": {"worker": [f"sketch-rnn-train-{i}.sketch-rnn-train:2222"
                                                    for i in range(3)]},
                             "task": {"type": "worker", "index": index}}
        args = build_parser().parse_args(lines["ARGS"].split()[1:])
        assert lines["ARGS"].split()[0] == "train"
        assert (args.strategy, args.data, args.model_dir, args.steps) == ("multiworker", "gs://b/data",
                                                                          "gs://b/run", 5000)
    assert container["ports"][0]["containerPort"] == service["spec"]["ports"][0]["port"] == 2222


def test_k8s_launcher_refuses_missing_settings():
    result = bash("k8s_train.sh", {"DRY_RUN": "1", "IMAGE": "i", "DATA": "gs://b/d"})
    assert result.returncode == 2 and "set MODEL_DIR" in result.stderr
    result = bash("k8s_train.sh", {"DRY_RUN": "1", "IMAGE": "i", "DATA": "d", "MODEL_DIR": "m",
                                   "NUM_WORKERS": "two"})
    assert result.returncode == 2 and "NUM_WORKERS must be a positive integer" in result.stderr


# --- our own server on Cloud Run, and the image ---------------------------------------------


def test_cloud_run_service_runs_a_valid_serve_command():
    spec = yaml.safe_load((LAUNCH / "cloudrun_service.yaml").read_text())
    assert spec["apiVersion"] == "serving.knative.dev/v1" and spec["kind"] == "Service"
    container, = spec["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "serve"
    from deploy.server import build_parser

    args = build_parser().parse_args(container["args"][1:])
    assert args.host == "0.0.0.0" and args.port == container["ports"][0]["containerPort"]
    assert container["startupProbe"]["httpGet"] == {"path": f"/v1/models/{args.model_name}", "port": args.port}
    mount, = container["volumeMounts"]
    model, = args.model
    assert model.startswith(mount["mountPath"] + "/")


def test_dockerfile_copies_every_package_and_runs_the_cli():
    lines = [line.strip() for line in (LAUNCH / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0].startswith("FROM python:3.")
    copied = set()
    for line in lines:
        if line.startswith("COPY "):
            sources = line.split()[1:-1]
            for source in sources:
                assert (REPO / source).exists(), source
            copied.update(sources)
    setup = (REPO / "setup.py").read_text()
    packages = re.search(r"include=\[([^\]]*)\]", setup).group(1)
    for package in re.findall(r'"(\w+)"', packages):
        assert package in copied, f"Dockerfile does not COPY {package}"
    entry = next(line for line in lines if line.startswith("ENTRYPOINT"))
    assert json.loads(entry[len("ENTRYPOINT"):]) == ["sketch-rnn"]
