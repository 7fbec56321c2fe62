"""``weakseg data ...``: make, derive, check and describe datasets."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from weakseg.io import DataError, WeaksegWarning


def _new_dataset_folder(path: str, overwrite: bool) -> None:
    """Refuse to write a dataset over an existing one (``dataset.json`` there) without ``--overwrite``."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder} is an existing file; expected a folder for the new dataset")
    if (folder / "dataset.json").is_file() and not overwrite:
        raise DataError(
            f"{folder} already holds a dataset ({folder / 'dataset.json'}); choose another folder, "
            "or pass --overwrite to write over its files"
        )


def _splits_of(root: str, fmt: str) -> list[str]:
    from weakseg.data.formats import dataset_splits

    return dataset_splits(fmt, root)


def _open_dataset(root: str, split: str, fmt: str):
    """The dataset with every label map it has (VOC: scribbles when their PNG folder is there)."""
    from weakseg.data.formats import create_dataset

    return create_dataset(fmt, root, split, scribbles="if_present")


def cmd_synthetic(args: argparse.Namespace) -> int:
    from weakseg.data.synthetic import make_synthetic_dataset

    _new_dataset_folder(args.out, args.overwrite)
    root = make_synthetic_dataset(
        args.out,
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=args.num_test,
        size=tuple(args.size),
        num_classes=args.num_classes,
        seed=args.seed,
        image_mode=args.mode,
    )
    print(f"synthetic dataset written to {root}")
    return 0


def cmd_variant(args: argparse.Namespace) -> int:
    from weakseg.data.scribbles import write_scribble_variant

    _new_dataset_folder(args.dst, args.overwrite)
    ratio = getattr(args, "ratio", 0.0)
    root = write_scribble_variant(
        args.src,
        args.dst,
        args.op,
        ratio=ratio,
        seed=args.seed,
        splits=args.splits,
        width=args.width,
        progress=not args.quiet,
    )
    print(f"{args.op} dataset written to {root}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    splits = args.split or _splits_of(args.root, args.format)
    if not splits:
        raise DataError(f"{args.root} has no splits to verify (no split files found)")
    total = 0
    for split in splits:
        try:
            with warnings.catch_warnings():  # duplicate ids are reported below as problems
                warnings.simplefilter("ignore", WeaksegWarning)
                dataset = _open_dataset(args.root, split, args.format)
            problems = dataset.verify(progress=not args.quiet)
        except DataError as err:  # the split itself is unusable (missing, empty, unsafe ids)
            problems, dataset = [str(err)], None
        for p in problems:
            print(p)
        total += len(problems)
        if dataset is not None and not problems:
            kinds = [k for k in ("mask", "scribble", "pseudo") if dataset.has(k)]
            print(
                f"{args.root} split '{split}': {len(dataset)} samples, {dataset.num_classes} classes, "
                f"labels: {', '.join(kinds) or 'none'}; all files readable and consistent, no duplicate ids"
            )
    if total:
        raise DataError(f"{total} problem(s) in {args.root} (splits checked: {', '.join(splits)})")
    return 0


def cmd_tags(args: argparse.Namespace) -> int:
    from weakseg.data import FolderDataset
    from weakseg.data.tags import write_tags_csv

    dataset = FolderDataset(args.root, args.split, tags_source=args.source, load_masks=args.source == "masks")
    tags = {dataset.ids[i]: dataset.tags_of(i) for i in range(len(dataset))}
    write_tags_csv(args.out, tags, dataset.classes, form=args.form)
    print(f"tags of {len(tags)} images from {args.source} written to {args.out}")
    return 0


def cmd_coco_labels(args: argparse.Namespace) -> int:
    from weakseg.data.coco import write_coco_label_pngs

    ids = write_coco_label_pngs(args.annotations, args.out, overlap=args.overlap, progress=not args.quiet)
    print(f"{len(ids)} COCO label PNGs written to {args.out}")
    return 0


def cmd_sbd(args: argparse.Namespace) -> int:
    from weakseg.data.voc import convert_sbd_to_png

    count = convert_sbd_to_png(args.sbd_cls_dir, args.out)
    print(f"{count} SBD masks written as label PNGs to {args.out}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from weakseg.data.imports import import_annotations

    _new_dataset_folder(args.out, args.overwrite)
    report = import_annotations(
        args.format,
        args.export,
        args.out,
        args.classes,
        images=args.images,
        width=args.width,
        split=args.split,
        mask_fill=args.mask_fill,
        overwrite=args.overwrite,
    )
    print(report.summary())
    return 0


def add_data_parser(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser(
        "data",
        help="make, derive and check datasets",
        description="Dataset tools: synthetic data, simulated / shrunk / dropped scribbles, "
        "checks, tags and COCO label PNGs.",
    )
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    p = dsub.add_parser("synthetic", help="generate the synthetic shapes dataset (folder format)")
    p.add_argument("out")
    p.add_argument("--num-train", type=int, default=400)
    p.add_argument("--num-val", type=int, default=60)
    p.add_argument("--num-test", type=int, default=0)
    p.add_argument("--size", type=int, nargs=2, default=[96, 96], metavar=("H", "W"))
    p.add_argument("--num-classes", type=int, default=4, help="background + shape classes (2..6)")
    p.add_argument("--mode", choices=["RGB", "L"], default="RGB")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="write over an existing dataset in OUT")
    p.set_defaults(func=cmd_synthetic)

    helps = {
        "simulate": "simulate scribbles from dense masks (e.g. for CamVid)",
        "shrink": "scribble-shrink robustness set: shorten every scribble to (1 - ratio) of its length",
        "drop": "scribble-drop robustness set: remove a ratio of whole scribbles per image",
    }
    for op, text in helps.items():
        p = dsub.add_parser(
            op,
            help=text,
            description=text + ". Writes a folder-format dataset whose "
            "dataset.json points back at the source's images and masks.",
        )
        p.add_argument("src", help="source dataset (folder format)")
        p.add_argument("dst", help="destination folder")
        if op != "simulate":
            p.add_argument("--ratio", type=float, required=True, help="0..1")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--width", type=int, default=3, help="stroke width of simulated scribbles (pixels)")
        p.add_argument("--splits", nargs="+", default=None, help="splits to process (default: all)")
        p.add_argument("--overwrite", action="store_true", help="write over an existing dataset in DST")
        p.add_argument("--quiet", action="store_true")
        p.set_defaults(func=cmd_variant, op=op)

    p = dsub.add_parser(
        "verify", help="read every sample of every split (or the given ones) and report every problem"
    )
    p.add_argument("root")
    p.add_argument("--split", nargs="+", default=None, help="splits to check (default: all of them)")
    p.add_argument("--format", choices=["folder", "voc", "coco"], default="folder")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = dsub.add_parser("tags", help="write image-level tags (CSV) derived from masks or scribbles")
    p.add_argument("root", help="dataset (folder format)")
    p.add_argument("--split", default="train")
    p.add_argument("--source", choices=["masks", "scribbles"], default="scribbles")
    p.add_argument("--form", choices=["names", "onehot"], default="onehot")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.set_defaults(func=cmd_tags)

    p = dsub.add_parser(
        "import",
        help="make a dataset from a CVAT, LabelMe or Label Studio export (scribbles, masks, tags)",
        description="Convert an annotation tool's export into a folder-format dataset: polylines, line "
        "strips and points become scribbles drawn --width pixels wide, brush strokes become scribble "
        "pixels as painted, polygons (and LabelMe rectangles / circles) become masks, image-level "
        "tags / flags / choices go to tags.csv. Unsupported shapes (boxes ...) are skipped and counted.",
    )
    p.add_argument(
        "export",
        help="CVAT: annotations.xml, its folder or the export .zip; "
        "LabelMe: a .json file or a folder of them; Label Studio: the exported .json",
    )
    p.add_argument("out", help="folder for the new dataset")
    p.add_argument("--format", required=True, choices=["cvat", "labelme", "labelstudio"])
    p.add_argument("--classes", required=True, help="class names in id order, e.g. background,cat,dog")
    p.add_argument("--images", default=None, help="folder holding the images (default: beside the export)")
    p.add_argument("--width", type=int, default=3, help="stroke width of lines and points in pixels")
    p.add_argument("--split", default="train", help="split that lists the imported images")
    p.add_argument(
        "--mask-fill",
        choices=["background", "ignore"],
        default="background",
        help="what masks hold outside the polygons of an annotated image (default: background)",
    )
    p.add_argument("--overwrite", action="store_true", help="write over an existing dataset in OUT")
    p.set_defaults(func=cmd_import)

    p = dsub.add_parser(
        "coco-labels", help="rasterise COCO instance annotations into label PNGs (0 bg, 1-80)"
    )
    p.add_argument("annotations", help="instances_train2014.json or instances_val2014.json")
    p.add_argument("out", help="folder for {id}.png")
    p.add_argument(
        "--overlap",
        choices=["later", "ignore"],
        default="later",
        help="overlapping instances: the later one wins, or the overlap becomes ignore (255)",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_coco_labels)

    p = dsub.add_parser(
        "sbd-to-png", help="convert SBD's cls/*.mat masks into label PNGs (for SegmentationClassAug)"
    )
    p.add_argument("sbd_cls_dir", help="benchmark_RELEASE/dataset/cls")
    p.add_argument("out", help="folder for {id}.png (e.g. VOC2012/SegmentationClassAug)")
    p.set_defaults(func=cmd_sbd)
