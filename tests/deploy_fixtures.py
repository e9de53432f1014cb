"""One tiny exported SketchRNN for the deploy tests and benchmarks/bench_serving.py.

Built directly (no preprocessing, no training): an untrained `tiny` model is enough for protocol,
CLI and browser tests. `build_tiny_export(dir)` returns the export base dir (`dir/export`, holding
version 1).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MAX_SEQ_LEN = 64
SCALE_FACTOR = 10.0


def build_tiny_export(root: str, conditional: bool = True, full_length: bool = False) -> str:
    """`full_length`: the end-of-sketch logit is pinned to -30, so every sketch runs to N_max (the
    untrained model otherwise stops after a couple of points; benchmarks want the full loop)."""
    import numpy as np
    import tensorflow as tf

    from model.hparams import HParams
    from model.sketch_rnn import SketchRNN
    from trainer.export import export_saved_model

    hps = HParams.preset("tiny")
    if not conditional:
        hps = hps.replace(conditional=False)
    model = SketchRNN(hps, max_seq_len=MAX_SEQ_LEN)
    model({"strokes": tf.zeros([1, 2, 5]), "lengths": tf.constant([2])}, training=False)
    if full_length:
        kernel, bias = model.head.get_weights()
        kernel[:, 2], bias[2] = 0.0, -30.0  # outputs [..., :3] are the pen logits (p1, p2, p3 = end)
        model.head.set_weights([kernel, bias.astype(np.float32)])
    metadata = {"format_version": 1, "scale_factor": SCALE_FACTOR, "max_seq_len": MAX_SEQ_LEN,
                "classes": ["cat"]}
    base = os.path.join(root, "export")
    export_saved_model(model, hps, metadata, base, version=1)
    return base


def square_stroke3():
    """A small closed square plus a dot-like second stroke: stroke-3 rows in pixels."""
    return [[10.0, 10.0, 0.0], [20.0, 0.0, 0.0], [0.0, 20.0, 0.0], [-20.0, 0.0, 0.0], [0.0, -20.0, 1.0],
            [5.0, 5.0, 0.0], [3.0, 2.0, 1.0]]


# --- shared across the deploy test modules: one export, one live server per session ---

_SHARED: dict = {}


def shared_export_dir(tmp_path_factory) -> str:
    if "export" not in _SHARED:
        _SHARED["export"] = build_tiny_export(str(tmp_path_factory.mktemp("deploy_export")))
    return _SHARED["export"]


def shared_server(export_dir: str):
    """A live `sketch-rnn serve` app (waitress, loopback, free port) in this process."""
    if "server" not in _SHARED:
        import atexit

        from deploy.sample import load_export
        from deploy.server import Server, Service, create_app

        service = Service(load_export(export_dir), "sketch_rnn", max_num=64)
        server = Server(create_app(service, max_body_bytes=1 << 20), "127.0.0.1", 0, threads=8,
                        max_body_bytes=1 << 20).start()
        atexit.register(server.stop)
        _SHARED["server"] = server
    return _SHARED["server"]


def http(url: str, body=None, method: str | None = None, timeout: float = 60):
    """(status, parsed JSON or text) of one request; `body` a dict/list (sent as JSON) or bytes."""
    import json
    import urllib.error
    import urllib.request

    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text
