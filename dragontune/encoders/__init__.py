"""Audio (and cross-modal) encoders. See :mod:`dragontune.encoders.base`."""

from dragontune.encoders.base import Encoder

__all__ = ["Encoder"]
