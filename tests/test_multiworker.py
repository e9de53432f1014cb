"""Two local worker processes with TF_CONFIG on loopback ports train together and agree on the weights."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("model.sketch_rnn", reason="model/sketch_rnn.py not there yet")

from test_input import sample_sketches, write_dataset  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent('''
    import json, sys
    import numpy as np
    from model.hparams import HParams
    from trainer.train import train_and_evaluate
    data, model_dir = sys.argv[1], sys.argv[2]
    hps = HParams.preset("tiny").replace(batch_size=8)
    logs = []
    r = train_and_evaluate(data, model_dir, hps, 6, "multiworker", checkpoint_every=3, eval_every=0,
                           log_every=1, export=False, test_at_end=False, log=logs.append)
    print("RESULT " + json.dumps({"step": r["step"], "logs": logs}))
''')


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_workers_agree(tmp_path, sample_dir):
    data = tmp_path / "data"
    write_dataset(data, sample_sketches(sample_dir, limit=120), shards=2)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    procs = []
    for i in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
        procs.append(subprocess.Popen([sys.executable, str(script), str(data), str(tmp_path / "run")],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0, err[-4000:]
            outs.append(json.loads([x for x in out.splitlines() if x.startswith("RESULT ")][-1][7:]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [o["step"] for o in outs] == [6, 6]
    # The chief (worker 0) wrote the real checkpoint; worker 1 wrote to its temp dir.
    import tensorflow as tf
    chief = tf.train.load_checkpoint(str(tmp_path / "run" / "checkpoints"))
    other = tf.train.load_checkpoint(
        tf.train.latest_checkpoint(str(tmp_path / "run" / "workertemp" / "worker_1" / "checkpoints")))
    names = [n for n in chief.get_variable_to_shape_map() if n.startswith("model/") and "OPTIMIZER" not in n]
    assert len(names) > 3
    for n in names:
        np.testing.assert_array_equal(chief.get_tensor(n), other.get_tensor(n))
    assert int(chief.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")) == 6
    # Both workers reported the same (all-reduced) loss at every step.
    costs = [[x.split(" sketches/s")[0].rsplit(" lr ", 1)[0] for x in o["logs"] if x.startswith("step ")]
             for o in outs]
    assert len(costs[0]) == 6 and costs[0] == costs[1]
