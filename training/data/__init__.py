"""Training data: find and split labelled images, load them in batches, compute statistics.

load_items -> DataSplit (errors before training) -> build_dataloaders -> uint8 NHWC batches;
the random augmentation runs on the device (training.augment), the evaluation views come from
service.imaging so validation measures what the service will see.
"""

from training.data.digits import make_digits
from training.data.labelled import labelled_folder, split_from_recipe
from training.data.loaders import (
    DataLoaders,
    EpochShuffleSampler,
    build_dataloaders,
    make_eval_loader,
)
from training.data.sources import IMAGE_EXTENSIONS, DataSplit, Items, load_items
from training.data.stats import IMAGENET_MEAN, IMAGENET_STD, compute_stats
from training.data.summary import format_summary

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "DataLoaders",
    "DataSplit",
    "EpochShuffleSampler",
    "Items",
    "build_dataloaders",
    "compute_stats",
    "format_summary",
    "labelled_folder",
    "load_items",
    "make_digits",
    "make_eval_loader",
    "split_from_recipe",
]
