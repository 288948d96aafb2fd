"""Datasets: MNIST (IDX) and the IDX reader, N-MNIST events, image folders, the scene benchmark."""

from stbp.data.events import EVENT_DTYPE, first_saccade, to_frames
from stbp.data.folder import load_folder, read_image
from stbp.data.idx import parse_idx, read_idx, write_idx
from stbp.data.mnist import MNIST, MNISTSplit, load_mnist, locate_mnist
from stbp.data.nmnist import (
    NMNIST,
    list_recordings,
    load_frames,
    locate_nmnist,
    parse_nmnist,
    read_nmnist,
)

__all__ = ["MNIST", "MNISTSplit", "load_mnist", "locate_mnist", "parse_idx", "read_idx", "write_idx"]
__all__ += ["EVENT_DTYPE", "NMNIST", "first_saccade", "list_recordings", "load_frames", "locate_nmnist",
            "parse_nmnist", "read_nmnist", "to_frames", "load_folder", "read_image"]
