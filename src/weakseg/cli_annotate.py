"""``weakseg annotate``: scribble and tag a dataset in the browser (see :mod:`weakseg.annotate`)."""

from __future__ import annotations

import argparse

from weakseg.io import DataError

__all__ = ["add_annotate_parser"]


def cmd_annotate(args: argparse.Namespace) -> int:
    from weakseg.annotate.server import _flask, create_app, serve

    _flask()  # a missing Flask is one line, before anything is written
    if args.new is not None:
        if args.dataset is not None:
            raise DataError(
                "give either DATASET_DIR (an existing dataset) or --new DIR (a new one), not both"
            )
        if not args.images or not args.classes:
            raise DataError("--new DIR needs --images PHOTOS_DIR and --classes background,cat,...")
        from weakseg.data.imports import create_dataset_from_images

        root = create_dataset_from_images(args.new, args.images, args.classes, split=args.split or "train")
        print(f"new dataset in {root} (images copied from {args.images})")
    else:
        if args.dataset is None:
            raise DataError(
                "give DATASET_DIR, or --new DIR --images PHOTOS_DIR --classes ... for a new dataset"
            )
        if args.images or args.classes:
            raise DataError("--images and --classes make a new dataset: use them with --new DIR")
        root = args.dataset
    app = create_app(root, args.checkpoint, split=args.split, device=args.device)
    serve(app, args.host, args.port)
    return 0


def add_annotate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "annotate",
        help="scribble and tag a dataset in the browser (optionally with a model's predictions)",
        description="A local web app over a folder-format dataset: draw scribbles per class, tick "
        "image-level tags, and (with --checkpoint) see the model's prediction and the images it is "
        "least sure of. Every change is saved at once to scribbles/<id>.png and tags.csv.",
    )
    p.add_argument("dataset", nargs="?", default=None, metavar="DATASET_DIR", help="an existing dataset")
    p.add_argument("--new", default=None, metavar="DIR", help="make a new dataset in DIR from --images")
    p.add_argument("--images", default=None, metavar="PHOTOS_DIR", help="with --new: the photos (copied)")
    p.add_argument("--classes", default=None, help="with --new: class names, e.g. background,cat,dog")
    p.add_argument("--checkpoint", default=None, metavar="CKPT", help="show this model's predictions")
    p.add_argument("--split", default=None, help="annotate only this split (default: every split)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine)"
    )
    p.add_argument("--port", type=int, default=8765, help="port (default: 8765; 0 picks a free one)")
    p.add_argument(
        "--device", default=None, help="where the checkpoint runs: cpu, cuda ... (default: cuda if any)"
    )
    p.set_defaults(func=cmd_annotate)
