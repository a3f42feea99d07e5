"""Data layer of hybridc: dataset files -> in-memory tensors -> on-device batches.

``load_dataset(name, data_dir, split)`` returns an :class:`ImageDataset` (``x`` float32 N x C x H x W in
[0, 1], ``y`` int64, plus ``num_classes``/``input_shape``/``mean``/``std``); :class:`DeviceLoader`
batches it on the training device, with reproducible, resumable shuffling and on-device augmentation.
File formats (IDX, CIFAR pickles, ImageNet32 npz), lookup and downloads live in their own modules.
"""

from .cifar import load_cifar_files, read_cifar_batch
from .datasets import DATASETS, SPLITS, DatasetInfo, ImageDataset, canonical_name, load_dataset
from .digits import load_digits_split
from .idx import load_idx_pair, read_idx, read_idx_images, read_idx_labels
from .imagenet32 import load_imagenet32_files
from .loader import AUGMENTS, DeviceLoader, random_crop_flip
from .sources import SOURCES, Source, dataset_home, default_root, download_file, locate_files, search_dirs

__all__ = [
    "AUGMENTS",
    "DATASETS",
    "SOURCES",
    "SPLITS",
    "DatasetInfo",
    "DeviceLoader",
    "ImageDataset",
    "Source",
    "canonical_name",
    "dataset_home",
    "default_root",
    "download_file",
    "load_cifar_files",
    "load_dataset",
    "load_digits_split",
    "load_idx_pair",
    "load_imagenet32_files",
    "locate_files",
    "random_crop_flip",
    "read_cifar_batch",
    "read_idx",
    "read_idx_images",
    "read_idx_labels",
    "search_dirs",
]
