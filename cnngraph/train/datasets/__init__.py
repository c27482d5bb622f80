"""Built-in raw dataset loaders: ``loader(cfg: DataConfig, input_shape, base_dir) -> RawSplits``.

``cnngraph.train.data`` wraps them (``LOADERS``) and does the splitting and normalisation.
"""
from ._common import RawSplits, stratified_split
from .cifar import load_cifar10
from .digits import load_digits, load_digits_rotation, load_digits_segmentation
from .folder import load_image_folder
from .idx import load_fashion_mnist, load_mnist, read_idx
from .npz import load_npz

__all__ = ["RawSplits", "stratified_split", "load_cifar10", "load_digits", "load_digits_rotation", "load_digits_segmentation", "load_image_folder",
           "load_fashion_mnist", "load_mnist", "read_idx", "load_npz"]
