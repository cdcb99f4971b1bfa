"""FasterSeg networks: operator table, slimmable layers, supernet, derivation, fixed networks.

Method: ``docs/method.md`` §1-§8. Importing this package builds nothing and reads nothing.
"""

from .architecture import Architecture, Branch
from .derive import derive_architecture
from .fuse import fuse_for_inference
from .heads import ConvBnRelu, FeatureFusion, Head
from .network import FasterSegNetwork, build_network, init_weights_
from .ops import OP_NAMES, OPS, WIDTH_CHOICES, ConvNorm, channels, resize
from .published import build_published, published_architecture
from .slimmable import USBatchNorm2d, USConv2d, make_divisible
from .state_dict import CheckpointMismatchError, export_official_state_dict, load_official_state_dict
from .supernet import Supernet, build_supernet

__all__ = [
    "OPS",
    "OP_NAMES",
    "WIDTH_CHOICES",
    "Architecture",
    "Branch",
    "CheckpointMismatchError",
    "ConvBnRelu",
    "ConvNorm",
    "FasterSegNetwork",
    "FeatureFusion",
    "Head",
    "Supernet",
    "USBatchNorm2d",
    "USConv2d",
    "build_network",
    "build_published",
    "build_supernet",
    "channels",
    "derive_architecture",
    "export_official_state_dict",
    "fuse_for_inference",
    "init_weights_",
    "load_official_state_dict",
    "make_divisible",
    "published_architecture",
    "resize",
]
