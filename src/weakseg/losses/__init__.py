"""Loss functions, one module per idea. A loss never knows which method uses it."""

from weakseg.losses.partial_ce import partial_cross_entropy

__all__ = ["partial_cross_entropy"]
