"""`sketch-rnn serve`: TF Serving's REST predict API for exported SavedModels, plus a demo page.

    sketch-rnn serve --model pig --model face [--port 8501] [--host 127.0.0.1]
    sketch-rnn serve --model EXPORT_DIR [--model-name sketch_rnn] [--poll-interval 10]
    sketch-rnn serve --model pig --model mine=runs/mine/export

Several models are served side by side, each under its name. A `--model` that is an export base
directory is watched as TF Serving watches its model base path: when a higher numeric version
directory appears, it is loaded in the background while the old version keeps answering, then
served; the old one is unloaded. `GET /v1/models/NAME` lists every version seen with its state
(LOADING, AVAILABLE, END; a version that failed to load is END with the error, and is retried
when its files change).

Endpoints (as TensorFlow Serving's REST API; V = a version):

    POST /v1/models/NAME:predict                 (also /v1/models/NAME/versions/V:predict)
    GET  /v1/models/NAME                         model_version_status of every version seen
    GET  /v1/models/NAME/versions/V              model_version_status of version V
    GET  /v1/models/NAME/metadata                signature_def summary (+ sketch_rnn limits)
    GET  /                                       the browser demo (deploy/static/, + /config.json)

A predict body names a signature (`sample`, `encode`, `decode`, `complete`) and gives its inputs
in one of TF Serving's two formats:

* columnar: `{"signature_name": S, "inputs": {name: value, ...}}` -> `{"outputs": {name: value}}`;
  values keep their batch dimension, scalars (`num`, `temperature`, `seed`) are plain numbers.
* row: `{"signature_name": S, "instances": [{name: value, ...}, ...]}` -> `{"predictions": [...]}`;
  inputs with a batch dimension (`strokes`, `lengths`, `z`) are stacked from the instances (each
  without the batch dimension), and the scalar inputs must hold the same value in every instance
  (one instance is the usual case: `sample` and `complete` take exactly one). The outputs are
  split along their first dimension: one prediction per sketch (so `sample` with num = 4 gives four
  predictions from one instance).

Errors, with TF Serving's codes: `{"error": "..."}` with HTTP 400 for a bad request (unknown
signature or input, wrong shape or type, NaN, over the limits, bad JSON, body too large) and for a
malformed request (a path, verb or method the API does not have: "Malformed request: POST /x"),
404 for an unknown model or version, 500 if TensorFlow fails (the details go to the server log,
not to the client). A request without `signature_name` runs `serving_default` (= `sample`). Strokes in the outputs are rounded to 1/1000 pixel.
Requests run concurrently (waitress worker threads; TF functions are thread safe).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import threading
from typing import Any

import numpy as np

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_TEMPERATURE = 10.0
MAX_ABS_VALUE = 1e5  # pixels offsets or latent values beyond this are corrupt input
BATCHED = {"strokes", "lengths", "z"}  # inputs with a leading batch dimension
_PATH = re.compile(r"^(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?(?P<rest>:[A-Za-z]+|/metadata)?$")


class BadRequest(Exception):
    """A request the server refuses with HTTP 400 and the message as `{"error": ...}`."""


class NotFound(Exception):
    """HTTP 404 with the message as `{"error": ...}`."""


def _shape_text(dims) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in dims) + "]"


class Service:
    """One loaded version of a model: request validation, the signature call, JSON conversion."""

    def __init__(self, export, model_name: str = "sketch_rnn", max_num: int = 64):
        self.export = export
        self.model_name = model_name
        self.max_num = int(max_num)
        self.version = str(export.version if export.version is not None else 1)
        self.specs = {name: fn.structured_input_signature[1] for name, fn in export.signatures.items()}

    # --- status and metadata ---

    def check_model(self, name: str, version: str | None) -> None:
        if name != self.model_name:
            raise NotFound(f"Servable not found for request: model {name!r} (this server serves "
                           f"{self.model_name!r})")
        if version is not None and version != self.version:
            raise NotFound(f"Servable not found for request: model {name!r} version {version!r} "
                           f"(loaded version: {self.version})")

    def status(self) -> dict[str, Any]:
        return {"model_version_status": [_version_status(self.version, "AVAILABLE")]}

    def limits(self) -> dict[str, Any]:
        return {"max_seq_len": self.export.max_seq_len, "z_size": self.export.z_size,
                "max_num": self.max_num, "max_temperature": MAX_TEMPERATURE,
                "scale_factor": self.export.metadata.get("scale_factor"),
                "resimplify_epsilon": self.export.resimplify_epsilon,
                "classes": self.export.metadata.get("classes")}

    def describe(self) -> dict[str, Any]:
        """What the demo page needs to build its requests (/config.json; not part of TF Serving)."""
        return {"model_name": self.model_name, "version": self.version,
                "signatures": sorted(self.specs), **self.limits()}

    def metadata(self) -> dict[str, Any]:
        """TF Serving's GetModelMetadata: the SavedModel's own SignatureDefs (tensor names as the
        graph has them), plus our limits under `sketch_rnn` (an extension TF Serving lacks)."""
        return {"model_spec": {"name": self.model_name, "signature_name": "", "version": self.version},
                "metadata": {"signature_def": {"signature_def": signature_defs(self.export.path)},
                             "sketch_rnn": self.limits()}}

    # --- predict ---

    def predict(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequest(f"the request body must be a JSON object, got a JSON {type(body).__name__}")
        unknown = sorted(set(body) - {"signature_name", "instances", "inputs"})
        if unknown:
            raise BadRequest(f"unknown request key(s) {unknown}; expected signature_name and instances or inputs")
        name = body.get("signature_name", "serving_default")
        if not isinstance(name, str) or name not in self.specs:
            raise BadRequest(f"Serving signature name: {name!r} not found in signature def; this model "
                             f"has {sorted(self.specs)}")
        if ("instances" in body) == ("inputs" in body):
            raise BadRequest("the request must have exactly one of 'instances' (row format) or "
                             "'inputs' (columnar format)")
        row = "instances" in body
        columns = self._rows_to_columns(name, body["instances"]) if row else body["inputs"]
        if not isinstance(columns, dict):
            raise BadRequest("'inputs' must be an object of named inputs "
                             f"({', '.join(sorted(self.specs[name]))}) for signature {name!r}")
        inputs = self._validate(name, columns)
        out = self.export.call(name, **inputs)
        out = {k: self._json_value(k, v) for k, v in out.items()}
        if not row:
            return {"outputs": out}
        batch = len(next(iter(out.values())))
        return {"predictions": [{k: v[i] for k, v in out.items()} for i in range(batch)]}

    def _rows_to_columns(self, name: str, instances: Any) -> dict[str, Any]:
        if not isinstance(instances, list) or not instances:
            raise BadRequest("'instances' must be a non-empty list of objects (one per batch element)")
        if len(instances) > self.max_num:
            raise BadRequest(f"{len(instances)} instances, more than the limit of {self.max_num}")
        if not all(isinstance(x, dict) for x in instances):
            raise BadRequest(f"each instance must be an object of named inputs "
                             f"({', '.join(sorted(self.specs[name]))}) for signature {name!r}")
        names = set(instances[0])
        for i, x in enumerate(instances):
            if set(x) != names:
                raise BadRequest(f"instance {i} has inputs {sorted(x)}, instance 0 has {sorted(names)}: "
                                 "every instance must name the same inputs")
        columns = {}
        for key in names:
            values = [x[key] for x in instances]
            if key in BATCHED:
                columns[key] = values
            else:
                if any(v != values[0] for v in values[1:]):
                    raise BadRequest(f"scalar input {key!r} must have the same value in every instance "
                                     f"(got {values[:4]}...)")
                columns[key] = values[0]
        return columns

    def _validate(self, name: str, columns: dict[str, Any]) -> dict[str, np.ndarray]:
        specs = self.specs[name]
        unknown = sorted(set(columns) - set(specs))
        missing = sorted(set(specs) - set(columns))
        if unknown:
            raise BadRequest(f"unknown input(s) {unknown} for signature {name!r}; it takes {sorted(specs)}")
        if missing:
            raise BadRequest(f"missing input(s) {missing} for signature {name!r}; it takes {sorted(specs)}")
        # Sketches and latents first, so a wrong batch is reported on the data, not on lengths.
        order = sorted(specs, key=lambda k: (k not in ("strokes", "z"), k))
        values = {k: self._to_array(name, k, columns[k], specs[k]) for k in order}
        if "num" in values and not 1 <= int(values["num"]) <= self.max_num:
            raise BadRequest(f"num must be in 1..{self.max_num} (--max-num), got {int(values['num'])}")
        if "temperature" in values and not 0.0 <= float(values["temperature"]) <= MAX_TEMPERATURE:
            raise BadRequest(f"temperature must be in [0, {MAX_TEMPERATURE:g}], got {float(values['temperature'])}")
        if "strokes" in values:
            strokes, lengths = values["strokes"], values["lengths"]
            batch, n = strokes.shape[0], strokes.shape[1]
            if not 1 <= batch <= self.max_num:
                raise BadRequest(f"strokes: batch of {batch} sketches, expected 1..{self.max_num}")
            if lengths.shape[0] != batch:
                raise BadRequest(f"lengths has {lengths.shape[0]} entries for {batch} sketches")
            if n > self.export.max_seq_len:
                raise BadRequest(f"strokes: {n} rows, more than the model's N_max = {self.export.max_seq_len}")
            if n and np.abs(strokes[..., :2]).max() > MAX_ABS_VALUE:
                raise BadRequest(f"strokes: offsets beyond +-{MAX_ABS_VALUE:g} pixels")
            if not np.isin(strokes[..., 2], (0.0, 1.0)).all():
                raise BadRequest("strokes: pen_lifted (the third value of each row) must be 0 or 1")
            if ((lengths < 1) | (lengths > n)).any():
                raise BadRequest(f"lengths must be in 1..{n} (the rows given), got {lengths.tolist()}")
        if "z" in values:
            z = values["z"]
            if not 1 <= z.shape[0] <= self.max_num:
                raise BadRequest(f"z: batch of {z.shape[0]} vectors, expected 1..{self.max_num}")
            if self.export.z_size and z.shape[1] != self.export.z_size:
                raise BadRequest(f"z must have shape [B, {self.export.z_size}], got {list(z.shape)}")
            if np.abs(z).max() > MAX_ABS_VALUE:
                raise BadRequest(f"z: values beyond +-{MAX_ABS_VALUE:g}")
        return values

    @staticmethod
    def _to_array(sig: str, key: str, value: Any, spec) -> np.ndarray:
        where = f"input {key!r} of signature {sig!r}"
        if _has_bool_or_null(value):
            raise BadRequest(f"{where}: expected numbers, got booleans, null, strings or objects")
        try:
            arr = np.asarray(value)
        except (ValueError, OverflowError):
            raise BadRequest(f"{where}: ragged nested lists (every row must have the same length)") from None
        if arr.dtype.kind not in "iuf":
            raise BadRequest(f"{where}: expected numbers (nested lists of numbers), got {_json_kind(value)}")
        want = spec.shape.as_list()
        if arr.ndim != len(want) or any(w is not None and w != g for w, g in zip(want, arr.shape)):
            raise BadRequest(f"{where}: expected shape {_shape_text(want)}, got {list(arr.shape)}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise BadRequest(f"{where}: NaN or Infinity")
        if spec.dtype.is_integer:
            if arr.dtype.kind == "f":
                raise BadRequest(f"{where}: expected integers, got {arr.ravel()[:3].tolist()}")
            if arr.size and (arr.min() < -2**31 or arr.max() >= 2**31):
                raise BadRequest(f"{where}: out of the int32 range")
            return arr.astype(np.int32)
        return arr.astype(np.float32)

    @staticmethod
    def _json_value(key: str, value: np.ndarray):
        if key == "strokes":
            return np.round(value.astype(np.float64), 3).tolist()
        return value.tolist()


def signature_defs(version_dir: str) -> dict[str, Any]:
    """The `serve` MetaGraph's SignatureDefs of version_dir/saved_model.pb as TF Serving prints
    them (proto field names, default values included, int64 sizes as strings)."""
    import tensorflow as tf
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(os.path.join(version_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    graph = next(g for g in proto.meta_graphs if "serve" in g.meta_info_def.tags)
    out = {}
    for name in sorted(graph.signature_def):
        out[name] = json_format.MessageToDict(graph.signature_def[name], preserving_proto_field_name=True,
                                              always_print_fields_with_no_presence=True)
    return out


def _version_status(version: str, state: str, error: str = "") -> dict[str, Any]:
    """One entry of TF Serving's `model_version_status` (states: LOADING, AVAILABLE, UNLOADING, END)."""
    return {"version": str(version), "state": state,
            "status": {"error_code": "UNKNOWN" if error else "OK", "error_message": error}}


def _listing(base: str) -> dict[int, tuple]:
    """{version: fingerprint} of BASE/<digits>/ directories that hold a saved_model.pb. The
    fingerprint (names, sizes, mtimes of the files) tells a directory still being copied."""
    import tensorflow as tf

    from deploy.sample import export_versions

    found = {}
    for version in export_versions(base):
        path = os.path.join(base, str(version))
        files = []
        for root, _, names in tf.io.gfile.walk(path):
            for n in names:
                st = tf.io.gfile.stat(os.path.join(root, n))
                files.append((os.path.relpath(os.path.join(root, n), path), st.length, st.mtime_nsec))
        found[version] = tuple(sorted(files))
    return found


class ModelSlot:
    """Every version of one served model, as TF Serving's file-system source with its default
    `latest` policy: the highest version that loads is served; a higher one appearing in the base
    directory is loaded in the background (the old one keeps answering until it is AVAILABLE), then
    the old one is unloaded (END). A version that fails to load is END with its error and is retried
    when its files change (a copy still in progress). `poll()` does one scan; `start_polling` runs it
    on a timer. A version directory given directly (not a base) is served alone, without polling.
    """

    def __init__(self, name: str, path: str | None = None, max_num: int = 64, loader=None, log=print,
                 service: Service | None = None):
        """`path`: an export base dir (polled) or a version dir; or `service`: one loaded version."""
        self.name, self.max_num, self.log = name, int(max_num), log
        self._lock = threading.Lock()
        self._states: dict[int, dict[str, Any]] = {}  # version -> {state, error, fingerprint}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.current: Service | None = service
        self.base = None  # None: one fixed version, no polling.
        if service is None:
            from deploy.sample import load_export, resolve_export_dir

            self._load = loader or load_export
            path = path.rstrip("/") or "/"
            version_dir, _ = resolve_export_dir(path)  # UsageError: nothing servable there.
            if version_dir != path:
                self.base = path
                self.poll()
                if self.current is None:
                    errors = "; ".join(f"version {v}: {st['error']}" for v, st in sorted(self._states.items()))
                    raise RuntimeError(f"no version of {path} loads ({errors})")
                return
            self.current = Service(self._load(version_dir), name, max_num)
        self._states[int(self.current.version)] = {"state": "AVAILABLE", "error": ""}

    @property
    def path(self) -> str:
        return self.current.export.path

    def poll(self) -> list[int]:
        """Loads a version higher than the served one if one appeared (or changed since it failed).
        Returns the versions loaded by this call."""
        listing = _listing(self.base)
        loaded = []
        served = int(self.current.version) if self.current else -1
        for version in sorted((v for v in listing if v > served), reverse=True):
            known = self._states.get(version)
            if known and known["state"] == "END" and known.get("fingerprint") == listing[version]:
                continue  # Failed before and unchanged since: do not retry in a loop.
            with self._lock:
                self._states[version] = {"state": "LOADING", "error": ""}
            try:
                service = Service(self._load(os.path.join(self.base, str(version))), self.name, self.max_num)
            except Exception as e:  # Serve on with what we have; say why in the status.
                message = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                with self._lock:
                    self._states[version] = {"state": "END", "error": message,
                                             "fingerprint": listing[version]}
                self.log(f"model {self.name!r}: version {version} does not load: {message}")
                continue
            with self._lock:
                old, self.current = self.current, service
                self._states[version] = {"state": "AVAILABLE", "error": ""}
                if old is not None:
                    self._states[int(old.version)] = {"state": "END", "error": ""}
            loaded.append(version)
            if old is not None:  # (The first load is announced by the caller.)
                self.log(f"model {self.name!r}: serving version {version} ({service.export.path}), "
                         f"version {old.version} unloaded")
            break  # The highest version that loads wins.
        return loaded

    def start_polling(self, interval_s: float) -> None:
        if self.base is None or interval_s <= 0:
            return

        def loop():
            while not self._stop.wait(interval_s):
                try:
                    self.poll()
                except Exception as e:  # A vanished or unreadable base dir: keep serving, say so.
                    self.log(f"model {self.name!r}: cannot scan {self.base}: {type(e).__name__}: {e}")

        self._thread = threading.Thread(target=loop, name=f"poll-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def service(self, version: str | None) -> Service:
        with self._lock:
            current = self.current
        if version is not None and version != current.version:
            raise NotFound(f"Servable not found for request: model {self.name!r} version {version!r} "
                           f"(serving version {current.version})")
        return current

    def status(self, version: str | None = None) -> dict[str, Any]:
        with self._lock:
            states = sorted(self._states.items(), reverse=True)
        if version is not None:
            states = [(v, st) for v, st in states if str(v) == version]
            if not states:
                raise NotFound(f"Servable not found for request: model {self.name!r} version {version!r}")
        return {"model_version_status": [_version_status(str(v), st["state"], st["error"]) for v, st in states]}


class ModelSet:
    """The models a server serves, by name (`/v1/models/NAME`); the first is the demo page's default."""

    def __init__(self, slots: list[ModelSlot]):
        self.slots = {slot.name: slot for slot in slots}
        if len(self.slots) != len(slots):
            raise ValueError("two models with the same name")

    def slot(self, name: str) -> ModelSlot:
        if name not in self.slots:
            raise NotFound(f"Servable not found for request: model {name!r} (this server serves "
                           f"{', '.join(repr(n) for n in self.slots)})")
        return self.slots[name]

    def describe(self) -> dict[str, Any]:
        models = [slot.service(None).describe() for slot in self.slots.values()]
        return {**models[0], "models": models}  # Top level: the default model (older pages).


def _has_bool_or_null(value) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
        elif v is None or isinstance(v, (bool, str, dict)):
            return True
    return False


def _json_kind(value) -> str:
    return type(value).__name__.replace("NoneType", "null")


# --- the web app ----------------------------------------------------------------------------


def create_app(models, max_body_bytes: int = 4 << 20):
    """The Flask app: REST API routes, the static demo page, JSON errors for every failure.
    `models`: a ModelSet, or one Service (served alone under its model_name)."""
    from flask import Flask, jsonify, request, send_from_directory
    from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

    if isinstance(models, Service):
        models = ModelSet([ModelSlot(models.model_name, service=models)])
    app = Flask(__name__, static_folder=STATIC_DIR, static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = int(max_body_bytes)
    app.json.sort_keys = False

    def error(message: str, code: int):
        return jsonify({"error": message}), code

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_):
        return error(f"request body larger than the limit of {max_body_bytes} bytes (--max-body-bytes)", 400)

    @app.errorhandler(HTTPException)
    def http_error(e):
        if e.code in (404, 405):  # TF Serving: any path or method it does not serve is malformed.
            return error(f"Malformed request: {request.method} {request.path}", 400)
        return error(f"{e.name}: {e.description}", e.code or 500)

    @app.errorhandler(Exception)
    def internal(e):  # Never crash on input: whatever escaped becomes a JSON 500, details in the log.
        app.logger.exception("request failed: %s %s", request.method, request.path)
        return error("internal error while running the model (the server log has the details)", 500)

    @app.get("/")
    def index():
        return send_from_directory(STATIC_DIR, "index.html")

    @app.get("/config.json")
    def config():  # What the demo page needs to build its requests (not part of TF Serving's API).
        return jsonify(models.describe())

    @app.route("/v1/models/<path:rest>", methods=["GET", "POST"])
    def model_api(rest):
        m = _PATH.match(rest)
        malformed = error(f"Malformed request: {request.method} /v1/models/{rest}", 400)
        if not m:
            return malformed
        name, version, verb = m.group("name"), m.group("version"), m.group("rest")
        try:
            slot = models.slot(name)
            if verb is None:
                if request.method != "GET":
                    return malformed
                return jsonify(slot.status(version))
            if verb == "/metadata":
                if request.method != "GET":
                    return malformed
                return jsonify(slot.service(version).metadata())
            if verb != ":predict":  # TF Serving's :classify and :regress need tf.Example signatures.
                return error(f"Malformed request: {request.method} /v1/models/{rest} (this server "
                             "implements :predict only)", 400)
            if request.method != "POST":
                return malformed
            service = slot.service(version)
            raw = request.get_data(cache=False)
            try:
                body = json.loads(raw)
            except (ValueError, RecursionError) as e:
                raise BadRequest(f"the request body is not valid JSON: {e}"[:300]) from None
            return jsonify(service.predict(body))
        except BadRequest as e:
            return error(str(e), 400)
        except NotFound as e:
            return error(str(e), 404)

    return app


class Server:
    """A waitress server running `app` on (host, port) in a background thread (port 0: any free)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, threads: int = 8, max_body_bytes: int = 4 << 20):
        from waitress.server import create_server

        # The app answers bodies over max_body_bytes with a JSON 400. waitress buffers a body before
        # the app sees it, so it gets a hard cap of its own (4x): beyond that it answers a plain 413
        # and closes the connection without reading gigabytes.
        self._server = create_server(app, host=host, port=port, threads=threads,
                                     max_request_body_size=4 * max_body_bytes,
                                     connection_limit=256, ident="sketch-rnn")
        self.host, self.port = host, int(self._server.effective_port)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def serve_forever(self) -> None:
        self._server.run()

    def start(self) -> "Server":
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def parse_model_specs(specs: list[str], default_name: str) -> list[tuple[str, str]]:
    """`--model` values -> [(name, export path)]. A value is NAME=PATH, a shipped model's name
    (served under that name), or a PATH (served as `default_name`, i.e. --model-name)."""
    from deploy.sample import UsageError, resolve_model

    out = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if sep and "/" not in name:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise UsageError(f"--model {spec}: NAME may hold letters, digits, _ . - only")
            if not path:
                raise UsageError(f"--model {spec}: NAME=PATH needs a path")
            out.append((name, resolve_model(path)[1]))
            continue
        shipped, path = resolve_model(spec)
        out.append((shipped or default_name, path))
    names = [n for n, _ in out]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"two models would be served as {duplicates[0]!r}: name them with NAME=PATH")
    return out


def build_parser() -> argparse.ArgumentParser:
    from deploy.sample import shipped_models

    p = argparse.ArgumentParser(prog="sketch-rnn serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--model", required=True, action="append", metavar="NAME|PATH|NAME=PATH",
                   help="a model to serve (repeatable): a shipped model (" +
                        (", ".join(shipped_models()) or "none installed") + ") served under its name, "
                        "an export base dir (its highest version is served, new versions are picked "
                        "up) or version dir served as --model-name, or NAME=PATH")
    p.add_argument("--port", type=int, default=8501, help="TCP port (default 8501, TF Serving's REST port; 0: any free)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--model-name", default="sketch_rnn",
                   help="NAME in /v1/models/NAME for a --model given as a path (default sketch_rnn)")
    p.add_argument("--poll-interval", type=float, default=10.0, metavar="SECONDS",
                   help="how often export base dirs are scanned for new versions, as TF Serving's "
                        "--file_system_poll_wait_seconds (default 10; 0: never)")
    p.add_argument("--max-num", type=int, default=64, help="most sketches per request (default 64)")
    p.add_argument("--max-body-bytes", type=int, default=4 << 20, help="largest request body (default 4 MiB)")
    p.add_argument("--threads", type=int, default=8, help="worker threads serving requests (default 8)")
    return p


def main(argv: list[str] | None = None) -> int:
    from deploy.sample import UsageError

    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:
        return int(e.code or 0)
    problems = []
    if not 0 <= args.port <= 65535:
        problems.append(f"--port must be in 0..65535, got {args.port}")
    if args.max_num < 1:
        problems.append(f"--max-num must be >= 1, got {args.max_num}")
    if args.max_body_bytes < 1024:
        problems.append(f"--max-body-bytes must be >= 1024, got {args.max_body_bytes}")
    if args.threads < 1:
        problems.append(f"--threads must be >= 1, got {args.threads}")
    if not (math.isfinite(args.poll_interval) and args.poll_interval >= 0):
        problems.append(f"--poll-interval must be >= 0 seconds, got {args.poll_interval}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.model_name):
        problems.append(f"--model-name may hold letters, digits, _ . - only, got {args.model_name!r}")
    specs = []
    if not problems:
        try:
            specs = parse_model_specs(args.model, args.model_name)
        except UsageError as e:
            problems.append(str(e))
    if problems:
        parser.print_usage(sys.stderr)
        for message in problems:
            print(f"sketch-rnn serve: error: {message}", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    slots = []
    for name, path in specs:
        try:
            slots.append(ModelSlot(name, path, args.max_num, log=lambda m: print(m, flush=True)))
        except UsageError as e:
            print(f"sketch-rnn serve: error: {e}", file=sys.stderr)
            return 2
        except Exception as e:
            print(f"sketch-rnn serve: error: cannot load the model from {path}: {type(e).__name__}: {e}",
                  file=sys.stderr)
            return 1
    app = create_app(ModelSet(slots), args.max_body_bytes)
    try:
        server = Server(app, args.host, args.port, args.threads, args.max_body_bytes)
    except OSError as e:
        print(f"sketch-rnn serve: error: cannot listen on {args.host}:{args.port}: {e.strerror or e}",
              file=sys.stderr)
        return 1
    for slot in slots:
        service = slot.service(None)
        polling = f"; polling {slot.base} every {args.poll_interval:g} s" if slot.base and args.poll_interval else ""
        print(f"serving {service.export.path} (version {service.version}, signatures "
              f"{', '.join(sorted(service.specs))}) as model {slot.name!r} at {server.url}/  "
              f"(REST: {server.url}/v1/models/{slot.name}:predict{polling})", flush=True)
        slot.start_polling(args.poll_interval)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        for slot in slots:
            slot.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
