"""weakseg: weakly supervised semantic segmentation from scribbles and image-level tags."""

__version__ = "0.1.0"
