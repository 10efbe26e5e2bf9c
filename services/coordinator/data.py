"""A job's data, pulled from Redis: built-in datasets are staged there once from the data directory."""

from __future__ import annotations

from gls_core.data import Dataset, load_dataset
from gls_core.data.registry import default_augmentation
from gls_core.training.config import TrainConfig
from gls_core.training.trainer import TrainData, first_examples

from ..store import NotFound, Store


def builtin_id(name: str, split: str) -> str:
    return f"builtin-{name}-{split}"


def stage_builtin(store: Store, name: str, split: str, data_dir: object | None) -> str:
    """Copy a built-in dataset split into Redis unless it is already there; returns its dataset id."""
    dataset_id = builtin_id(name, split)
    try:
        store.dataset_info(dataset_id)
        return dataset_id
    except NotFound:
        pass
    local = load_dataset(name, split, data_dir if data_dir is None else str(data_dir))
    store.put_dataset("", name, local.x, local.y, local.num_classes, source=local.source,
                      dataset_id=dataset_id)
    return dataset_id


def pull(store: Store, dataset_id: str, tenant: str, augment_like: str) -> Dataset:
    info, x, y = store.dataset_arrays(dataset_id, tenant)
    return Dataset(info.name, x, y, info.num_classes, default_augmentation(augment_like), source=f"redis:{dataset_id}")


def job_data(store: Store, config: TrainConfig, tenant: str, data_dir: object | None) -> TrainData:
    data = config.data
    if data.dataset == "file":
        if data.dataset_id is None:
            raise ValueError("a services job with dataset 'file' needs data.dataset_id")
        train = pull(store, data.dataset_id, tenant, "file")
        test = pull(store, data.test_dataset_id or data.dataset_id, tenant, "file")
    else:
        train = pull(store, stage_builtin(store, data.dataset, "train", data_dir), tenant, data.dataset)
        test = pull(store, stage_builtin(store, data.dataset, "test", data_dir), tenant, data.dataset)
    return TrainData(first_examples(train, data.train_subset), first_examples(test, data.test_subset))
