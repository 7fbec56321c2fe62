"""The annotation tool's web server: one static page and a small JSON API (Flask).

Routes (ids may hold ``/``; every id is checked and must be listed in the dataset's splits):

=====================================  ==========================================================
``GET /``                              the page (``static/index.html``)
``GET /api/dataset``                   name, classes, colours, background, whether a model is loaded,
                                       and ``images``: ``[{"id", "done"}]`` in list order
``GET /api/images/<id>/image``         the image (as stored; re-encoded as PNG when a browser could
                                       not show it as the training code reads it)
``GET /api/images/<id>/annotation``    ``{"width", "height", "scribble", "tags", "revision"}``;
                                       ``scribble`` is ``[value, count, ...]`` runs, row by row
``PUT /api/images/<id>/annotation``    body ``{"width", "height", "scribble", "tags"}``: saves
                                       ``scribbles/<id>.png`` and the image's ``tags.csv`` row
``GET /api/images/<id>/prediction``    with a checkpoint: ``{"width", "height", "labels", "uncertainty"}``
``GET /api/uncertainty``               with a checkpoint: images scored so far, most uncertain first
=====================================  ==========================================================

Errors are JSON ``{"error": message}`` (404 for an unknown image, 400 for bad input). When the
server listens on a loopback address it answers only requests whose ``Host`` is a loopback name
(so a web page cannot reach it through DNS rebinding) and saves only JSON bodies (which a page of
another origin cannot send without the browser asking first).
"""

from __future__ import annotations

import errno
import io
import ipaddress
import os
import socket
import sys
from pathlib import Path
from typing import Any

from weakseg.annotate.store import AnnotationStore, UnknownImageError, decode_runs, encode_runs
from weakseg.io import DataError, UserError

STATIC = Path(__file__).resolve().parent / "static"
# Formats browsers show as they are; others (TIFF, 16-bit PNG ...) are re-encoded as PNG.
_BROWSER_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def _flask() -> Any:
    try:
        import flask
    except ImportError:
        raise UserError(
            "weakseg annotate needs Flask: pip install -c constraints.txt 'weakseg[annotate]'"
        ) from None
    return flask


class AnnotateState:
    """What one app serves: the store and, with a checkpoint, the predictor."""

    def __init__(self, store: AnnotationStore, predictor: Any = None) -> None:
        self.store = store
        self.predictor = predictor

    def close(self) -> None:
        if self.predictor is not None:
            self.predictor.close()


def create_app(
    dataset_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    *,
    split: str | None = None,
    device: str | None = None,
    rank: bool = True,
) -> Any:
    """The Flask app of the annotation tool over a folder-format dataset.

    Args:
        dataset_dir: the dataset (``dataset.json``, ``splits/``, images).
        checkpoint: a segmenter checkpoint for the prediction overlay and the uncertainty list.
        split: annotate only this split's images (default: all splits).
        device: where the checkpoint runs (default: cuda when available).
        rank: start scoring every image's uncertainty in a background thread (with a checkpoint).

    The app's ``extensions["weakseg_annotate"]`` is its :class:`AnnotateState`; call its ``close()``
    to stop the ranking thread.
    """
    flask = _flask()
    store = AnnotationStore(dataset_dir, split)
    predictor = None
    if checkpoint is not None:
        from weakseg.annotate.model import Predictor

        predictor = Predictor(checkpoint, store, device)
        if rank:
            predictor.start_ranking()
    state = AnnotateState(store, predictor)
    app = flask.Flask("weakseg.annotate", static_folder=str(STATIC), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = 512 * 1024 * 1024  # a scribble of a 50-megapixel photo fits
    app.extensions["weakseg_annotate"] = state
    jsonify, request = flask.jsonify, flask.request

    def require_model() -> Any:
        if state.predictor is None:
            raise UnknownImageError("no model loaded: start weakseg annotate with --checkpoint CKPT")
        return state.predictor

    @app.before_request
    def only_loopback_hosts() -> Any:
        server = request.environ.get("SERVER_NAME", "")
        if _is_loopback(server) and _host_name(request.host or "").lower() not in _LOOPBACK_NAMES:
            return jsonify(error=f"host {request.host!r} refused: open the page at http://127.0.0.1"), 403
        return None

    @app.after_request
    def no_caching_of_data(response: Any) -> Any:
        if request.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.errorhandler(UnknownImageError)
    def not_found(err: Exception) -> Any:
        return jsonify(error=str(err)), 404

    @app.errorhandler(UserError)
    def bad_input(err: Exception) -> Any:
        return jsonify(error=str(err)), 400

    @app.get("/")
    def index() -> Any:
        return flask.send_from_directory(STATIC, "index.html")

    @app.get("/api/dataset")
    def dataset() -> Any:
        s = state.store
        return jsonify(
            name=s.spec.name,
            root=str(s.root),
            classes=s.classes,
            colours=_colours(s),
            background=s.background,
            has_model=state.predictor is not None,
            checkpoint=str(state.predictor.checkpoint) if state.predictor is not None else None,
            images=s.status(),
        )

    @app.get("/api/images/<path:sample_id>/image")
    def image(sample_id: str) -> Any:
        path = state.store.image_path(sample_id)
        data, mimetype = _browser_image(path, state.store.spec.image_mode)
        return flask.Response(data, mimetype=mimetype)

    @app.get("/api/images/<path:sample_id>/annotation")
    def get_annotation(sample_id: str) -> Any:
        return jsonify(state.store.annotation(sample_id))

    @app.put("/api/images/<path:sample_id>/annotation")
    def put_annotation(sample_id: str) -> Any:
        store = state.store
        store.check_id(sample_id)
        if not request.is_json:
            raise DataError("save: expected a JSON body (Content-Type: application/json)")
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise DataError("save: the body must be a JSON object")
        size = store.image_size(sample_id)
        if (body.get("height"), body.get("width")) != size:
            raise DataError(
                f"save {sample_id!r}: the page's canvas is {body.get('width')}x{body.get('height')}, "
                f"the image {size[1]}x{size[0]}; reload the page"
            )
        scribble = decode_runs(body.get("scribble"), size, f"save {sample_id!r}")
        tags = body.get("tags", [])
        if not isinstance(tags, list):
            raise DataError(f"save {sample_id!r}: 'tags' must be a list of class indices")
        return jsonify(store.save(sample_id, scribble, tags))

    @app.get("/api/images/<path:sample_id>/prediction")
    def prediction(sample_id: str) -> Any:
        labels, score = require_model().predict(state.store.check_id(sample_id))
        return jsonify(
            id=sample_id,
            height=int(labels.shape[0]),
            width=int(labels.shape[1]),
            labels=encode_runs(labels),
            uncertainty=round(score, 4),
        )

    @app.get("/api/uncertainty")
    def ranking() -> Any:
        return jsonify(require_model().ranking())

    return app


def _host_name(host: str) -> str:
    """The name part of a Host header: ``127.0.0.1:8765`` → ``127.0.0.1``, ``[::1]:80`` → ``[::1]``."""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def _colours(store: AnnotationStore) -> list[list[int]]:
    """One [R, G, B] per class: ``dataset.json``'s "palette" when it has one per class, else the VOC
    colour map the label PNGs are written with."""
    custom = store.spec.extra.get("palette")
    if (
        isinstance(custom, list)
        and len(custom) >= len(store.classes)
        and all(
            isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
            for c in custom
        )
    ):
        return [list(c) for c in custom[: len(store.classes)]]
    from weakseg.viz import make_palette

    return make_palette(len(store.classes)).tolist()


def _browser_image(path: Path, mode: str) -> tuple[bytes, str]:
    """The image file's bytes when a browser shows it as weakseg reads it, else a PNG of what
    weakseg reads (8-bit, EXIF orientation not applied, as :func:`weakseg.io.read_image`)."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            fmt = img.format or ""
            orientation = img.getexif().get(0x0112, 1) if hasattr(img, "getexif") else 1
            plain = (
                fmt in _BROWSER_FORMATS
                and orientation in (1, None)
                and img.mode in ("RGB", "RGBA", "L", "P", "LA")
            )
            if plain and mode == "RGB":
                return path.read_bytes(), _BROWSER_FORMATS[fmt]
            buf = io.BytesIO()
            img.convert(mode).save(buf, format="PNG")
            return buf.getvalue(), "image/png"
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err


def make_server(app: Any, host: str = "127.0.0.1", port: int = 8765) -> Any:
    """A threaded WSGI server for ``app`` (werkzeug's), bound but not yet serving.

    A port in use is a one-line :class:`~weakseg.io.UserError`; ``port=0`` picks a free port
    (``server.server_port`` tells which)."""
    from werkzeug.serving import make_server as werkzeug_server

    _check_port(host, port)  # werkzeug would print its own lines and exit
    try:
        return werkzeug_server(host, port, app, threaded=True)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise UserError(
                f"port {port} on {host} is in use; pass another with --port N (0: any free port)"
            ) from None
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    except SystemExit:  # werkzeug exits when the port is taken on some versions
        raise UserError(
            f"port {port} on {host} is in use; pass another with --port N (0: any free port)"
        ) from None


def _check_port(host: str, port: int) -> None:
    """A one-line :class:`~weakseg.io.UserError` when ``host:port`` cannot be listened on."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise UserError(
                    f"port {port} on {host} is in use; pass another with --port N (0: any free port)"
                ) from None
            raise UserError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


def serve(app: Any, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve ``app`` until interrupted (Ctrl+C), then stop its background work."""
    server = make_server(app, host, port)
    url_host = f"[{host}]" if ":" in host else host
    print(f"weakseg annotate: http://{url_host}:{server.server_port}/  (Ctrl+C to stop)", flush=True)
    if not _is_loopback(host):
        print(
            f"weakseg: warning: listening on {host}: anyone who can reach this address can read and change "
            "the dataset",
            file=sys.stderr,
        )
    try:
        server.serve_forever()
    finally:
        server.server_close()
        app.extensions["weakseg_annotate"].close()
