"""Several models behind one server, shipped-model names, and new versions picked up while serving."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from deploy_fixtures import http, shared_export_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = {"signature_name": "sample", "inputs": {"num": 1, "temperature": 0.1, "seed": 0}}


@pytest.fixture()
def base(tmp_path_factory, tmp_path):
    """A fresh export base dir holding version 1 (a copy of the shared tiny export)."""
    src = shared_export_dir(tmp_path_factory)
    dst = tmp_path / "export"
    shutil.copytree(src, dst)
    return str(dst)


def versions(status):
    return {e["version"]: e["state"] for e in status["model_version_status"]}


# --- names: shipped models and NAME=PATH ---------------------------------------------------------


def test_shipped_model_names_resolve_and_unknown_names_are_refused(base, tmp_path, monkeypatch):
    from deploy import sample
    from deploy.server import parse_model_specs

    shipped = tmp_path / "pretrained"
    shutil.copytree(base, shipped / "pig")
    (shipped / "empty").mkdir()  # no version inside: not a model
    monkeypatch.setattr(sample, "PRETRAINED_DIR", str(shipped))
    monkeypatch.chdir(tmp_path)
    assert sample.shipped_models() == ["pig"]
    assert sample.resolve_model("pig") == ("pig", str(shipped / "pig"))
    assert sample.resolve_model(base) == (None, base)  # a path stays a path
    export = sample.load_export("pig")
    assert export.version == 1 and export.path == str(shipped / "pig" / "1")
    with pytest.raises(sample.UsageError, match=r"not a shipped model \(shipped: pig\)"):
        sample.resolve_model("dog")
    assert parse_model_specs(["pig", f"mine={base}", base], "sketch_rnn") == [
        ("pig", str(shipped / "pig")), ("mine", base), ("sketch_rnn", base)]
    with pytest.raises(sample.UsageError, match="served as 'pig'"):
        parse_model_specs(["pig", f"pig={base}"], "sketch_rnn")
    with pytest.raises(sample.UsageError, match="NAME=PATH needs a path"):
        parse_model_specs(["pig="], "sketch_rnn")


def test_sample_command_takes_a_shipped_name(base, tmp_path, monkeypatch):
    from deploy import sample

    shipped = tmp_path / "pretrained"
    shutil.copytree(base, shipped / "pig")
    monkeypatch.setattr(sample, "PRETRAINED_DIR", str(shipped))
    out = tmp_path / "out" / "pigs"
    assert sample.main(["--model", "pig", "--num", "2", "--output", str(out)]) == 0
    assert len(open(f"{out}.ndjson").read().splitlines()) == 2
    assert sample.main(["--model", "no_such_model", "--output", str(out)]) == 2


# --- versions: polling like TF Serving's file-system source --------------------------------------


def test_new_version_is_loaded_then_served_and_the_old_one_unloaded(base):
    from deploy.server import ModelSlot

    slot = ModelSlot("m", base, log=lambda m: None)
    assert slot.service(None).version == "1"
    assert slot.poll() == []  # nothing new
    shutil.copytree(os.path.join(base, "1"), os.path.join(base, "7"))
    assert slot.poll() == [7]
    assert slot.service(None).version == "7"
    assert slot.service(None).export.path == os.path.join(base, "7")
    assert versions(slot.status()) == {"7": "AVAILABLE", "1": "END"}
    assert versions(slot.status("7")) == {"7": "AVAILABLE"}


def test_a_broken_version_keeps_the_old_one_serving_and_is_retried_when_its_files_change(base):
    from deploy.server import ModelSlot, NotFound

    messages = []
    slot = ModelSlot("m", base, log=messages.append)
    broken = os.path.join(base, "2")
    os.makedirs(broken)
    with open(os.path.join(broken, "saved_model.pb"), "wb") as f:
        f.write(b"not a protobuf")
    assert slot.poll() == []
    assert slot.service(None).version == "1"
    status = {e["version"]: e for e in slot.status()["model_version_status"]}
    assert status["2"]["state"] == "END" and status["2"]["status"]["error_code"] != "OK"
    assert status["2"]["status"]["error_message"] and status["1"]["state"] == "AVAILABLE"
    assert any("version 2 does not load" in m for m in messages)
    assert slot.poll() == [] and len(messages) == 1  # unchanged files: not retried in a loop
    with pytest.raises(NotFound):
        slot.service("2")
    shutil.rmtree(broken)  # the copy finishes: now the same files as a good version
    shutil.copytree(os.path.join(base, "1"), broken)
    assert slot.poll() == [2]
    assert versions(slot.status()) == {"2": "AVAILABLE", "1": "END"}


def test_the_old_version_answers_while_the_new_one_loads(base):
    from deploy.sample import load_export
    from deploy.server import ModelSlot

    release, started = threading.Event(), threading.Event()

    def slow_loader(path):
        if path.endswith(os.sep + "3"):
            started.set()
            assert release.wait(60)
        return load_export(path)

    slot = ModelSlot("m", base, loader=slow_loader, log=lambda m: None)
    shutil.copytree(os.path.join(base, "1"), os.path.join(base, "3"))
    poller = threading.Thread(target=slot.poll)
    poller.start()
    assert started.wait(60)
    assert versions(slot.status()) == {"3": "LOADING", "1": "AVAILABLE"}
    out = slot.service(None).export.call("sample", num=1, temperature=0.1, seed=0)
    assert out["strokes"].shape[0] == 1 and slot.service(None).version == "1"
    release.set()
    poller.join(60)
    assert versions(slot.status()) == {"3": "AVAILABLE", "1": "END"}


# --- several models over HTTP --------------------------------------------------------------------


def test_serve_several_models_and_pick_up_a_copied_version_without_restart(base, tmp_path):
    other = str(tmp_path / "other")
    shutil.copytree(base, other)
    proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "serve", "--model", f"pig={base}",
                             "--model", f"face={other}", "--port", "0", "--poll-interval", "1"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert "'pig'" in lines[0] and "'face'" in lines[1], lines
        url = lines[0].split(" at ")[1].split("/ ")[0].strip()
        status, config = http(f"{url}/config.json")
        assert status == 200 and [m["model_name"] for m in config["models"]] == ["pig", "face"]
        assert config["model_name"] == "pig"  # the default model, for older pages
        for name in ("pig", "face"):
            assert http(f"{url}/v1/models/{name}:predict", SAMPLE)[0] == 200
        assert http(f"{url}/v1/models/dog:predict", SAMPLE)[0] == 404

        shutil.copytree(os.path.join(base, "1"), os.path.join(base, "5"))
        deadline, answered = time.time() + 45, 0
        while time.time() < deadline:
            status, out = http(f"{url}/v1/models/pig:predict", SAMPLE)
            assert status == 200, out  # predictions keep answering while version 5 loads
            answered += 1
            if versions(http(f"{url}/v1/models/pig")[1]).get("5") == "AVAILABLE":
                break
            time.sleep(0.2)
        assert versions(http(f"{url}/v1/models/pig")[1]) == {"5": "AVAILABLE", "1": "END"}
        assert http(f"{url}/v1/models/pig/versions/5:predict", SAMPLE)[0] == 200
        assert versions(http(f"{url}/v1/models/face")[1]) == {"1": "AVAILABLE"}  # untouched
        assert answered >= 1
    finally:
        proc.terminate()
        proc.wait(timeout=20)
