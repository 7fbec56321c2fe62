"""``weakseg annotate``: scribble and tag a folder-format dataset in the browser.

A local web app (Flask, one static page, no build step): an image list with progress, a canvas to
draw scribbles per class (brush, eraser, undo / redo, zoom / pan; mouse, pen and touch), image-level
tags as check boxes, and, with a checkpoint, the model's prediction as an overlay and the images
ranked by the model's uncertainty. Every change is saved at once as ``scribbles/<id>.png`` and the
image's ``tags.csv`` row (atomic writes; with two tabs on one image the last save wins).

Python::

    from weakseg.annotate import create_app, serve
    app = create_app("mydata", checkpoint="runs/demo_pce/last.ckpt")
    serve(app, "127.0.0.1", 8765)

See ``docs/annotate.md``.
"""

from weakseg.annotate.server import AnnotateState, create_app, make_server, serve
from weakseg.annotate.store import AnnotationStore, decode_runs, encode_runs

__all__ = [
    "AnnotateState",
    "AnnotationStore",
    "create_app",
    "decode_runs",
    "encode_runs",
    "make_server",
    "serve",
]
