"""Data: data sets as class-indexed tensors on the device, episodic task sampling, augmentation on the device and
batches of augmented views for self-supervised learners."""

from .episodic import ClassSplit, Preprocess, TaskBatch, check_task_shape, episode_seed, eval_episodes, sample_tasks
from .images import ImageReadError, decode_image
from .loaders.folder import load_image_folder
from .registry import DATASETS, DatasetSpec, get_dataset, list_datasets, load_dataset, register_dataset
from .root import DatasetNotFoundError, cache_dir, resolve_data_root
from .augment import AugmentSpec, augment
from .views import ViewBatch, ViewSource

__all__ = [
    "ClassSplit", "Preprocess", "TaskBatch", "check_task_shape", "episode_seed", "eval_episodes", "sample_tasks",
    "ImageReadError", "decode_image", "load_image_folder", "DATASETS", "DatasetSpec", "get_dataset", "list_datasets", "load_dataset",
    "register_dataset", "DatasetNotFoundError", "cache_dir", "resolve_data_root", "AugmentSpec", "augment", "ViewBatch",
    "ViewSource",
]
