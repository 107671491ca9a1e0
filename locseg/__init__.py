"""locseg: hierarchical visual localization under changing conditions, and
segmentation trained on the cross-condition correspondences it produces."""

from .errors import LocsegError

__version__ = "0.1.0"
__all__ = ["LocsegError", "__version__"]
