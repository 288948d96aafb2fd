"""Datasets: MNIST (IDX) and the IDX reader."""

from stbp.data.idx import parse_idx, read_idx, write_idx
from stbp.data.mnist import MNIST, MNISTSplit, load_mnist, locate_mnist

__all__ = ["MNIST", "MNISTSplit", "load_mnist", "locate_mnist", "parse_idx", "read_idx", "write_idx"]
