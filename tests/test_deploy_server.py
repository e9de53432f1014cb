"""`sketch-rnn serve` over real HTTP on loopback: TF Serving's REST API on a tiny exported model."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from deploy_fixtures import MAX_SEQ_LEN, http, shared_export_dir, shared_server, square_stroke3

Z = 8  # tiny preset z_size


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    return shared_server(shared_export_dir(tmp_path_factory))


@pytest.fixture(scope="module")
def predict_url(server):
    return f"{server.url}/v1/models/sketch_rnn:predict"


def ok(url, body):
    status, out = http(url, body)
    assert status == 200, out
    return out


# --- status and metadata -------------------------------------------------------------------


def test_status_and_metadata(server):
    status, out = http(f"{server.url}/v1/models/sketch_rnn")
    assert status == 200
    assert out == {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                             "status": {"error_code": "OK", "error_message": ""}}]}
    assert http(f"{server.url}/v1/models/sketch_rnn/versions/1")[0] == 200
    status, meta = http(f"{server.url}/v1/models/sketch_rnn/metadata")
    assert status == 200
    assert meta["model_spec"] == {"name": "sketch_rnn", "signature_name": "", "version": "1"}
    defs = meta["metadata"]["signature_def"]["signature_def"]
    # Every SignatureDef of the graph, as TF Serving lists them (its init op included).
    assert sorted(defs) == ["__saved_model_init_op", "complete", "decode", "encode", "sample", "serving_default"]
    assert sorted(defs["complete"]["inputs"]) == ["lengths", "num", "seed", "strokes", "temperature"]
    assert defs["sample"]["inputs"]["num"]["dtype"] == "DT_INT32"
    assert defs["sample"]["inputs"]["num"]["tensor_shape"] == {"dim": [], "unknown_rank": False}
    assert [d["size"] for d in defs["encode"]["inputs"]["strokes"]["tensor_shape"]["dim"]] == ["-1", "-1", "3"]
    assert sorted(defs["sample"]["outputs"]) == ["lengths", "strokes"]
    assert defs["sample"]["method_name"] == "tensorflow/serving/predict"
    assert meta["metadata"]["sketch_rnn"]["max_seq_len"] == MAX_SEQ_LEN
    assert meta["metadata"]["sketch_rnn"]["z_size"] == Z
    status, config = http(f"{server.url}/config.json")
    assert status == 200 and config["model_name"] == "sketch_rnn" and config["max_num"] == 64
    assert config["resimplify_epsilon"] == 0.0  # the page simplifies drawings like the training data


def test_metadata_tensor_names_run_in_the_session_loader(server, tmp_path_factory):
    """The names in /metadata are the graph's own: a TF1 client (TF Serving's restore path) can feed
    and fetch them. Hand-built names (`StatefulPartitionedCall:0` for every output) fail here."""
    import tensorflow as tf

    defs = http(f"{server.url}/v1/models/sketch_rnn/metadata")[1]["metadata"]["signature_def"]["signature_def"]
    sig = defs["serving_default"]
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        tf.compat.v1.saved_model.loader.load(sess, ["serve"], os.path.join(shared_export_dir(tmp_path_factory), "1"))
        feed = {sig["inputs"]["num"]["name"]: 2, sig["inputs"]["temperature"]["name"]: 0.5,
                sig["inputs"]["seed"]["name"]: 3}
        strokes, lengths = sess.run([sig["outputs"]["strokes"]["name"], sig["outputs"]["lengths"]["name"]], feed)
    assert strokes.shape == (2, MAX_SEQ_LEN, 3) and lengths.shape == (2,)
    out = ok(f"{server.url}/v1/models/sketch_rnn:predict",
             {"inputs": {"num": 2, "temperature": 0.5, "seed": 3}})["outputs"]  # serving_default
    assert out["lengths"] == lengths.tolist()


# --- each signature in both formats ---------------------------------------------------------


def test_sample_columnar_and_row(server, predict_url):
    inputs = {"num": 3, "temperature": 0.5, "seed": 7}
    out = ok(predict_url, {"signature_name": "sample", "inputs": inputs})["outputs"]
    strokes, lengths = np.array(out["strokes"]), np.array(out["lengths"])
    assert strokes.shape == (3, MAX_SEQ_LEN, 3) and lengths.shape == (3,)
    rows = ok(f"{server.url}/v1/models/sketch_rnn/versions/1:predict",
              {"signature_name": "sample", "instances": [inputs]})["predictions"]
    assert len(rows) == 3  # one prediction per sketch, split along the output batch dimension
    assert [r["lengths"] for r in rows] == out["lengths"]  # same seed, same sketches
    assert [r["strokes"] for r in rows] == out["strokes"]
    for s, n in zip(strokes, lengths):
        assert not s[n:].any()  # padding rows are zeros


def test_encode_columnar_and_row(predict_url):
    a = square_stroke3()
    b = a[:5] + [[0.0, 0.0, 0.0]] * 2  # padded to the same N; lengths says 5
    out = ok(predict_url, {"signature_name": "encode", "inputs": {"strokes": [a, b], "lengths": [7, 5]}})["outputs"]
    mu, sigma = np.array(out["mu"]), np.array(out["sigma"])
    assert mu.shape == (2, Z) and sigma.shape == (2, Z) and (sigma > 0).all()
    rows = ok(predict_url, {"signature_name": "encode",
                            "instances": [{"strokes": a, "lengths": 7}, {"strokes": b, "lengths": 5}]})
    assert np.allclose([r["mu"] for r in rows["predictions"]], mu, atol=1e-6)


def test_decode_columnar_and_row(predict_url, tmp_path_factory):
    """Both formats return what the SavedModel's decode signature gives for the same z,
    temperature and seed (strokes rounded to 1/1000 pixel); row i of the row format is z[i]'s
    decoding (checked greedily, where each row's decoding does not depend on the others)."""
    import tensorflow as tf

    module = tf.saved_model.load(os.path.join(shared_export_dir(tmp_path_factory), "1"))

    def direct(z, temperature, seed):
        out = module.signatures["decode"](z=tf.constant(z, tf.float32), temperature=tf.constant(temperature),
                                          seed=tf.constant(seed))
        return np.round(out["strokes"].numpy().astype(np.float64), 3), out["lengths"].numpy().tolist()

    z = np.linspace(-1, 1, 2 * Z).reshape(2, Z).round(3).tolist()
    out = ok(predict_url, {"signature_name": "decode",
                           "inputs": {"z": z, "temperature": 0.3, "seed": 1}})["outputs"]
    assert np.array(out["strokes"]).shape == (2, MAX_SEQ_LEN, 3)
    strokes, lengths = direct(z, 0.3, 1)
    assert out["lengths"] == lengths
    np.testing.assert_allclose(out["strokes"], strokes, atol=1e-9)
    rows = ok(predict_url, {"signature_name": "decode", "instances": [
        {"z": z[0], "temperature": 0.3, "seed": 1}, {"z": z[1], "temperature": 0.3, "seed": 1}]})
    assert [r["lengths"] for r in rows["predictions"]] == out["lengths"]
    assert [r["strokes"] for r in rows["predictions"]] == out["strokes"]
    greedy = ok(predict_url, {"signature_name": "decode", "instances": [
        {"z": z[0], "temperature": 0.0, "seed": 1}, {"z": z[1], "temperature": 0.0, "seed": 1}]})["predictions"]
    for i in range(2):
        s, n = direct(z[i:i + 1], 0.0, 1)
        assert greedy[i]["lengths"] == n[0]
        np.testing.assert_allclose(greedy[i]["strokes"], s[0], atol=2e-3)
    assert greedy[0]["strokes"] != greedy[1]["strokes"]  # The decoding depends on z.


def test_complete_columnar_and_row_keeps_the_prefix(predict_url):
    prefix = square_stroke3()
    inputs = {"strokes": [prefix], "lengths": [len(prefix)], "num": 4, "temperature": 0.5, "seed": 3}
    out = ok(predict_url, {"signature_name": "complete", "inputs": inputs})["outputs"]
    strokes = np.array(out["strokes"])
    assert strokes.shape == (4, MAX_SEQ_LEN, 3)
    assert all(n >= len(prefix) for n in out["lengths"])
    assert np.allclose(strokes[:, : len(prefix)], np.array(prefix)[None], atol=1e-3)
    rows = ok(predict_url, {"signature_name": "complete", "instances": [
        {"strokes": prefix, "lengths": len(prefix), "num": 4, "temperature": 0.5, "seed": 3}]})
    assert len(rows["predictions"]) == 4
    assert [r["lengths"] for r in rows["predictions"]] == out["lengths"]


# --- bad requests: HTTP 400 with a JSON error saying what was wrong ---------------------------

SQ = square_stroke3()
BAD = {
    "not json": (b'{"signature_name": "sample", "inputs": ', "not valid JSON"),
    "not an object": ([1, 2], "must be a JSON object"),
    "unknown key": ({"signature_name": "sample", "inputs": {}, "extra": 1}, "unknown request key"),
    "unknown signature": ({"signature_name": "classify", "inputs": {}}, "'classify' not found"),
    "no signature name": ({"inputs": {"num": 1}}, "missing input(s) ['seed', 'temperature'] for signature 'serving_default'"),
    "both formats": ({"signature_name": "sample", "inputs": {}, "instances": []}, "exactly one of"),
    "neither format": ({"signature_name": "sample"}, "exactly one of"),
    "inputs not an object": ({"signature_name": "sample", "inputs": [1, 0.5, 1]}, "'inputs' must be an object"),
    "missing input": ({"signature_name": "sample", "inputs": {"num": 1, "seed": 1}}, "missing input(s) ['temperature']"),
    "unknown input": ({"signature_name": "sample", "inputs": {"num": 1, "temperature": 1, "seed": 1, "x": 2}},
                      "unknown input(s) ['x']"),
    "string value": ({"signature_name": "sample", "inputs": {"num": "4", "temperature": 1, "seed": 1}},
                     "expected numbers"),
    "boolean value": ({"signature_name": "sample", "inputs": {"num": True, "temperature": 1, "seed": 1}},
                      "expected numbers"),
    "float for int": ({"signature_name": "sample", "inputs": {"num": 2.5, "temperature": 1, "seed": 1}},
                      "expected integers"),
    "scalar as list": ({"signature_name": "sample", "inputs": {"num": [2], "temperature": 1, "seed": 1}},
                       "expected shape []"),
    "NaN": (b'{"signature_name": "sample", "inputs": {"num": 2, "temperature": NaN, "seed": 1}}', "NaN"),
    "Infinity in strokes": (b'{"signature_name": "encode", "inputs": {"strokes": [[[1, Infinity, 1]]], '
                            b'"lengths": [1]}}', "NaN or Infinity"),
    "too many samples": ({"signature_name": "sample", "inputs": {"num": 65, "temperature": 1, "seed": 1}},
                         "num must be in 1..64"),
    "zero samples": ({"signature_name": "sample", "inputs": {"num": 0, "temperature": 1, "seed": 1}},
                     "num must be in 1..64"),
    "negative temperature": ({"signature_name": "sample", "inputs": {"num": 1, "temperature": -1, "seed": 1}},
                             "temperature must be in"),
    "seed beyond int32": ({"signature_name": "sample", "inputs": {"num": 1, "temperature": 1, "seed": 2**40}},
                          "int32"),
    "strokes wrong rank": ({"signature_name": "encode", "inputs": {"strokes": SQ, "lengths": [7]}},
                           "expected shape [N, N, 3]"),
    "strokes wrong width": ({"signature_name": "encode", "inputs": {"strokes": [[[1, 2]]], "lengths": [1]}},
                            "expected shape [N, N, 3]"),
    "ragged strokes": ({"signature_name": "encode", "inputs": {"strokes": [SQ, SQ[:3]], "lengths": [7, 3]}},
                       "ragged"),
    "too long sketch": ({"signature_name": "encode", "inputs": {"strokes": [[[1, 1, 0]] * (MAX_SEQ_LEN + 1)],
                                                                "lengths": [MAX_SEQ_LEN + 1]}},
                        f"more than the model's N_max = {MAX_SEQ_LEN}"),
    "lengths beyond rows": ({"signature_name": "encode", "inputs": {"strokes": [SQ], "lengths": [8]}},
                            "lengths must be in 1..7"),
    "lengths batch mismatch": ({"signature_name": "encode", "inputs": {"strokes": [SQ], "lengths": [7, 7]}},
                               "lengths has 2 entries for 1 sketches"),
    "pen not 0/1": ({"signature_name": "encode", "inputs": {"strokes": [[[1, 1, 0.5]]], "lengths": [1]}},
                    "pen_lifted"),
    "absurd offsets": ({"signature_name": "encode", "inputs": {"strokes": [[[1e9, 1, 1]]], "lengths": [1]}},
                       "offsets beyond"),
    "z wrong size": ({"signature_name": "decode", "inputs": {"z": [[0.0] * (Z + 1)], "temperature": 1, "seed": 1}},
                     f"z must have shape [B, {Z}]"),
    "complete batch of 2": ({"signature_name": "complete", "inputs": {"strokes": [SQ, SQ], "lengths": [7, 7],
                                                                      "num": 1, "temperature": 1, "seed": 1}},
                            "expected shape [1, N, 3]"),
    "complete too many": ({"signature_name": "complete", "inputs": {"strokes": [SQ], "lengths": [7],
                                                                    "num": 100, "temperature": 1, "seed": 1}},
                          "num must be in 1..64"),
    "row: empty instances": ({"signature_name": "sample", "instances": []}, "non-empty list"),
    "row: not objects": ({"signature_name": "sample", "instances": [1, 0.5, 1]}, "each instance must be an object"),
    "row: different names": ({"signature_name": "encode", "instances": [{"strokes": SQ, "lengths": 7},
                                                                         {"strokes": SQ}]}, "same inputs"),
    "row: scalars differ": ({"signature_name": "decode", "instances": [{"z": [0] * Z, "temperature": 1, "seed": 1},
                                                                       {"z": [0] * Z, "temperature": 1, "seed": 2}]},
                            "same value in every instance"),
    "row: too many instances": ({"signature_name": "decode", "instances": [{"z": [0] * Z, "temperature": 1,
                                                                            "seed": 1}] * 65}, "more than the limit"),
    "row: complete two instances": ({"signature_name": "complete", "instances": [
        {"strokes": SQ, "lengths": 7, "num": 1, "temperature": 1, "seed": 1}] * 2}, "expected shape [1, N, 3]"),
    "oversize body": (b'{"signature_name": "sample", "inputs": {"num": 1, "temperature": 1, "seed": 1}, "pad": "'
                      + b"x" * (3 << 19) + b'"}', "larger than the limit"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_request_is_400_with_a_json_error(predict_url, case):
    body, message = BAD[case]
    status, out = http(predict_url, body)
    assert status == 400, (case, out)
    assert isinstance(out, dict) and list(out) == ["error"], out
    assert message in out["error"], (case, out["error"])


def test_not_found_and_wrong_method_are_json(server):
    status, out = http(f"{server.url}/v1/models/other:predict", {"signature_name": "sample", "inputs": {}})
    assert status == 404 and "other" in out["error"]
    status, out = http(f"{server.url}/v1/models/sketch_rnn/versions/2:predict",
                       {"signature_name": "sample", "inputs": {"num": 1, "temperature": 1, "seed": 1}})
    assert status == 404 and "version" in out["error"]
    # Paths, verbs and methods the API lacks are malformed requests (400), as TF Serving has them.
    status, out = http(f"{server.url}/v1/models/sketch_rnn:classify", {})
    assert status == 400 and "Malformed request" in out["error"] and "predict only" in out["error"]
    status, out = http(f"{server.url}/v1/models/sketch_rnn:predict")  # GET
    assert (status, out) == (400, {"error": "Malformed request: GET /v1/models/sketch_rnn:predict"})
    status, out = http(f"{server.url}/v1/models/sketch_rnn/metadata", {})  # POST
    assert status == 400 and "Malformed request: POST" in out["error"]
    status, out = http(f"{server.url}/nothing/here")
    assert (status, out) == (400, {"error": "Malformed request: GET /nothing/here"})
    # The server is still fine after all of that.
    assert http(f"{server.url}/v1/models/sketch_rnn")[0] == 200


def test_far_oversize_body_is_cut_off_and_the_server_lives_on(server, predict_url):
    import urllib.error

    body = b'{"signature_name": "sample", "pad": "' + b"x" * (5 << 20) + b'"}'  # 5x the 1 MiB limit
    try:
        status, _ = http(predict_url, body)
        assert status in (400, 413)
    except (urllib.error.URLError, ConnectionError):
        pass  # waitress answered 413 and closed the connection while the client was still sending
    assert http(f"{server.url}/v1/models/sketch_rnn")[0] == 200


def test_fifty_concurrent_requests_all_answered(server, predict_url):
    def one(i):
        if i % 2:
            body = {"signature_name": "sample", "inputs": {"num": 2, "temperature": 0.5, "seed": i % 4}}
        else:
            body = {"signature_name": "encode", "instances": [{"strokes": square_stroke3(), "lengths": 7}]}
        return i, http(predict_url, body, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, range(50)))
    assert all(status == 200 for _, (status, _) in results), [r for r in results if r[1][0] != 200][:2]
    # Concurrency does not mix requests up: same inputs, same outputs.
    by_seed = {}
    for i, (_, out) in results:
        if i % 2:
            by_seed.setdefault(i % 4, []).append(out["outputs"]["lengths"])
    assert all(len({tuple(v) for v in values}) == 1 for values in by_seed.values())


def test_serve_command_starts_and_answers(tmp_path_factory):
    export = shared_export_dir(tmp_path_factory)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "serve", "--model", export, "--port", "0",
                             "--model-name", "doodle"], cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving" in line and "'doodle'" in line, line
        url = line.split(" at ")[1].split("/ ")[0].strip()
        status, out = http(f"{url}/v1/models/doodle")
        assert status == 200 and out["model_version_status"][0]["state"] == "AVAILABLE"
        status, out = http(f"{url}/v1/models/doodle:predict",
                           {"signature_name": "sample", "inputs": {"num": 1, "temperature": 0.1, "seed": 0}})
        assert status == 200 and len(out["outputs"]["lengths"]) == 1
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_serve_usage_errors_exit_2(tmp_path):
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "deploy.cli", "serve", "--model", str(tmp_path), "--port", "-5"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--port must be in 0..65535" in result.stderr
    result = subprocess.run([sys.executable, "-m", "deploy.cli", "serve"], capture_output=True, text=True)
    assert result.returncode == 2 and "--model" in result.stderr
    assert time.time() - start < 30
