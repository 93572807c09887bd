"""Bad data inputs stop with one line naming the config key (or source argument), the value and
what is allowed: labels outside the model's classes (also from the input worker processes),
unknown TFDS data sets and splits, data sets not prepared, float and RGBA images."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs.classify import cifar10_resnet18
from configs.halftone import demo
from noise_research import config_schema
from noise_research.data import TfdsClassificationBatches, TfdsImageBatches, epoch_permutation
from noise_research.data.tfds_images import (
    DatasetNotPreparedError,
    TfdsInputError,
    open_array_record_source,
)
from noise_research.tasks import classify, halftone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_LABELS = (0, 1, 2, 12, 3, 4)
"""Labels of the integer-label data set's train split: 12 has no class of a 10-class model."""
TEST_LABELS = (0, -1, 1)
LABEL_SEED = 1
"""A seed whose first training epoch meets the label 12 in its third batch of 2 (checked by
`test_the_label_seed_puts_the_bad_label_in_the_third_batch`): the first batch, which the loop
builds in this process, is clean; the bad one comes from an input worker."""
CLASSIFY_KEYS = {
    "name": "data.name",
    "split": "data.train_split",
    "data_dir": "data.data_dir",
    "label_limit": "model.num_classes",
}


def label_error(split: str, index: int, position: int, label: int) -> str:
    return (
        f"config.model.num_classes = 10: TFDS dataset 'noise_research_int_labels' split {split!r} "
        f"example {index} (global position {position}) has label {label}; every label must be in "
        "[0, 10)"
    )


class NoiseResearchIntLabels(tfds.core.GeneratorBasedBuilder):
    """8 × 8 uint8 RGB images whose label is a plain integer (not a ClassLabel: the data set does
    not know its class count), some outside [0, 10)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "image": tfds.features.Tensor(shape=(8, 8, 3), dtype=np.uint8),
            "label": tfds.features.Scalar(dtype=np.int64),
        }
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {
            "train": self._generate_examples(TRAIN_LABELS),
            "test": self._generate_examples(TEST_LABELS),
        }

    def _generate_examples(self, labels):
        for index, label in enumerate(labels):
            yield index, {"image": np.full((8, 8, 3), 10 * index, np.uint8), "label": label}


class NoiseResearchOddImages(tfds.core.GeneratorBasedBuilder):
    """Float RGB ('image'), RGBA ('rgba') and one-channel gray ('gray') images; ClassLabel
    labels."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "image": tfds.features.Tensor(shape=(8, 8, 3), dtype=np.float32),
            "rgba": tfds.features.Tensor(shape=(8, 8, 4), dtype=np.uint8),
            "gray": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10),
        }
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for index in range(4):
            yield (
                index,
                {
                    "image": np.full((8, 8, 3), 0.5, np.float32),
                    "rgba": np.full((8, 8, 4), 7 * index, np.uint8),
                    "gray": np.full((8, 8, 1), 9 * index, np.uint8),
                    "label": index,
                },
            )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("odd_tfds")
    for builder in (NoiseResearchIntLabels, NoiseResearchOddImages):
        builder(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


@pytest.fixture(scope="module")
def stored_labels(data_dir) -> dict[str, list[int]]:
    """Each split's labels in the stored order (TFDS orders the examples by a hash of their key)."""
    return {
        split: [
            int(example["label"])
            for example in tfds.data_source(
                "noise_research_int_labels", split=split, data_dir=data_dir
            )
        ]
        for split in ("train", "test")
    }


@pytest.fixture(scope="module")
def train_label_error(stored_labels) -> str:
    """The error of the label 12 met in training with LABEL_SEED."""
    index = stored_labels["train"].index(12)
    order = list(epoch_permutation(LABEL_SEED, 0, len(TRAIN_LABELS)))
    return label_error("train", index, order.index(index), 12)


def _int_label_batches(data_dir, split="train", **kwargs) -> TfdsClassificationBatches:
    kwargs.setdefault("train", split == "train")
    return TfdsClassificationBatches(
        "noise_research_int_labels",
        split,
        global_batch_size=2,
        image_size=8,
        seed=LABEL_SEED,
        data_dir=data_dir,
        process_index=0,
        process_count=1,
        **kwargs,
    )


def _assert_one_line(error: pytest.ExceptionInfo, expected: str) -> None:
    assert isinstance(error.value, config_schema.ConfigError)
    assert str(error.value) == expected
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------- labels, checked on the data


def test_the_label_seed_puts_the_bad_label_in_the_third_batch(stored_labels):
    assert sorted(stored_labels["train"]) == sorted(TRAIN_LABELS)
    order = epoch_permutation(LABEL_SEED, 0, len(TRAIN_LABELS))
    assert 12 not in [stored_labels["train"][index] for index in order[:4]]


def test_a_label_outside_num_classes_stops_the_batch_naming_example_and_key(
    data_dir, stored_labels, train_label_error
):
    source = _int_label_batches(data_dir, label_limit=10, config_keys=CLASSIFY_KEYS, num_workers=0)
    assert source.num_classes is None  # not a ClassLabel: the metadata cannot tell
    order = epoch_permutation(LABEL_SEED, 0, len(TRAIN_LABELS))
    np.testing.assert_array_equal(
        source.batch(1)["label"], [stored_labels["train"][index] for index in order[2:4]]
    )
    with pytest.raises(TfdsInputError) as error:
        source.batch(2)
    _assert_one_line(error, train_label_error)
    # Without config keys the source names its own argument.
    plain = _int_label_batches(data_dir, label_limit=10, num_workers=0)
    with pytest.raises(ValueError, match=r"^label_limit=10: .* has label 12; "):
        plain.batch(2)
    evaluation = _int_label_batches(
        data_dir, "test", label_limit=10, config_keys=CLASSIFY_KEYS, num_workers=0
    )
    index = stored_labels["test"].index(-1)
    with pytest.raises(config_schema.ConfigError) as error:
        evaluation.batch(index // 2)
    _assert_one_line(error, label_error("test", index, index, -1))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_label_error_reaches_the_loop_from_the_input_workers(
    data_dir, train_label_error, num_workers
):
    source = _int_label_batches(
        data_dir, label_limit=10, config_keys=CLASSIFY_KEYS, num_workers=num_workers
    )
    batches = source.iterate(0)  # as the training loop reads them (train.loop.host_batches)
    try:
        for _ in range(2):
            next(batches)
        with pytest.raises(TfdsInputError) as error:  # from a grain worker process with 2
            next(batches)
        _assert_one_line(error, train_label_error)
    finally:
        batches.close()


def test_input_errors_keep_type_and_message_through_pickling():
    error = TfdsInputError([("label_limit", 10)], "example 3 has label 12", CLASSIFY_KEYS)
    for original in (error, DatasetNotPreparedError([("name", "x")], "not prepared")):
        copy = pickle.loads(pickle.dumps(original))
        assert type(copy) is type(original) and str(copy) == str(original)
    assert str(error) == "config.model.num_classes = 10: example 3 has label 12"


def test_labels_inside_num_classes_pass(data_dir):
    source = _int_label_batches(data_dir, label_limit=13, num_workers=0)
    labels = np.concatenate([source.batch(step)["label"] for step in range(3)])
    assert sorted(labels) == sorted(TRAIN_LABELS)


# ---------------------------------------------------------------- data set, split, images


def _classify_config(data_dir, **data) -> dict:
    config = cifar10_resnet18.get_config().to_dict()
    config["data"].update(data_dir=str(data_dir), **data)
    return config


def _halftone_config(data_dir, **data) -> dict:
    config = demo.get_config().to_dict()
    config["data"].update(data_dir=str(data_dir), **data)
    return config


def test_an_unknown_dataset_is_named_with_the_nearest_names(data_dir):
    with pytest.raises(config_schema.ConfigError) as error:
        classify.build(_classify_config(data_dir, name="cifar1O")).train_source(0, 1)
    _assert_one_line(
        error,
        "config.data.name = 'cifar1O': unknown TFDS dataset: not in TFDS's catalog nor prepared "
        f"in data_dir {str(data_dir)!r}; did you mean 'cifar10' or 'cifar100' or 'cifar10_n'?",
    )
    with pytest.raises(config_schema.ConfigError) as error:
        halftone.build(_halftone_config(data_dir, name="voc/2013")).train_source(0, 1)
    _assert_one_line(
        error, "config.data.name = 'voc/2013': TFDS dataset 'voc' has no config '2013'; its "
        "configs: 'voc/2007', 'voc/2012'"
    )  # fmt: skip


def test_a_dataset_not_prepared_says_how_to_prepare_it(data_dir, tmp_path):
    with pytest.raises(DatasetNotPreparedError) as error:
        classify.build(_classify_config(tmp_path, name="cifar10")).train_source(0, 1)
    _assert_one_line(
        error,
        f"config.data.name = 'cifar10': TFDS dataset 'cifar10' (split 'train') is not available "
        f"in array_record format in data_dir {str(tmp_path)!r} (nothing is prepared at "
        f"{tmp_path}/cifar10/3.0.2): prepare it with `tfds build cifar10 --data_dir={tmp_path} "
        "--file_format=array_record` (or, in Python, `tfds.builder('cifar10', "
        f"data_dir={str(tmp_path)!r}, file_format='array_record').download_and_prepare()`), or "
        "give the data_dir where it is prepared",
    )


def test_a_catalog_dataset_with_no_data_dir_at_all_says_how_to_prepare_it(tmp_path, monkeypatch):
    """The default data_dir missing: tfds raises KeyError('splits is empty') there."""
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no_tensorflow_datasets_here"))
    with pytest.raises(DatasetNotPreparedError, match=r"nothing is prepared at .*tfds build mnist"):
        open_array_record_source("mnist", "train", data_dir=None)


def test_an_unknown_split_lists_the_splits(data_dir):
    config = _classify_config(data_dir, name="noise_research_int_labels", eval_split="tset")
    with pytest.raises(config_schema.ConfigError) as error:
        classify.build(config).eval_source(0, 1)
    _assert_one_line(
        error,
        "config.data.eval_split = 'tset': TFDS dataset 'noise_research_int_labels' has no split "
        "'tset'; its splits: 'test', 'train' (or slices and sums of them, such as "
        "'train[:90%]+test')",
    )
    config["data"]["eval_split"] = "test[:2]+train[:1]"  # slices and sums of known splits work
    assert classify.build(config).eval_source(0, 1).num_examples == 3
    with pytest.raises(config_schema.ConfigError, match=r"^config.data.split = 'trian': .*'test'"):
        halftone.build(
            _halftone_config(data_dir, name="noise_research_int_labels", split="trian")
        ).train_source(0, 1)


def test_float_and_rgba_images_are_refused_and_gray_is_read(data_dir):
    with pytest.raises(config_schema.ConfigError) as error:
        classify.build(_classify_config(data_dir, name="noise_research_odd_images")).train_source(
            0, 1
        )
    _assert_one_line(
        error,
        "config.data.name = 'noise_research_odd_images': TFDS dataset 'noise_research_odd_images' "
        "feature 'image' holds float32 images of shape (8, 8, 3); expected uint8 (0..255) gray or "
        "RGB images, of shape (H, W), (H, W, 1) or (H, W, 3) (float images are refused: their "
        "value range is not known)",
    )
    config = _halftone_config(data_dir, name="noise_research_odd_images", image_key="rgba")
    with pytest.raises(config_schema.ConfigError) as error:
        halftone.build(config).train_source(0, 1)
    _assert_one_line(
        error,
        "config.data.image_key = 'rgba': TFDS dataset 'noise_research_odd_images' feature 'rgba' "
        "holds uint8 images of shape (8, 8, 4); expected uint8 (0..255) gray or RGB images, of "
        "shape (H, W), (H, W, 1) or (H, W, 3) (RGBA images are refused: drop or composite the "
        "alpha channel in the data set)",
    )
    config["data"]["image_key"] = "image"
    with pytest.raises(
        config_schema.ConfigError, match=r"^config.data.image_key = 'image': .*float32"
    ):
        halftone.build(config).train_source(0, 1)
    # Gray images: used as they are for halftoning, replicated to RGB for classification.
    gray = TfdsImageBatches(
        "noise_research_odd_images", global_batch_size=2, crop_size=8, data_dir=data_dir,
        image_key="gray", process_index=0, process_count=1, num_workers=0,
    )  # fmt: skip
    assert gray.batch(0)["image"].shape == (2, 8, 8, 1)
    gray_rgb = TfdsClassificationBatches(
        "noise_research_odd_images", global_batch_size=2, image_size=8, train=False,
        data_dir=data_dir, image_key="gray", process_index=0, process_count=1, num_workers=0,
    )  # fmt: skip
    batch = gray_rgb.batch(1)
    for image, label in zip(batch["image"], batch["label"], strict=True):
        np.testing.assert_array_equal(image, np.full((8, 8, 3), 9 * label, np.uint8))


# ---------------------------------------------------------------- the command line


def _main(workdir, config: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    command = [
        sys.executable, "-m", "noise_research.main", f"--config={config}",
        f"--workdir={workdir}", *args,
    ]  # fmt: skip
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def _error_lines(process: subprocess.CompletedProcess) -> list[str]:
    assert process.returncode == 2, process.stderr
    assert "Traceback" not in process.stderr, process.stderr
    return [line for line in process.stderr.splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--config.data.name=no_such_set"],
            "error: config.data.name = 'no_such_set': unknown TFDS dataset: not in TFDS's "
            "catalog nor prepared in data_dir '{data_dir}'; the known ones: "
            "https://www.tensorflow.org/datasets/catalog",
        ),
        (
            ["--config.data.name=noise_research_int_labels", "--config.data.train_split=trian"],
            "error: config.data.train_split = 'trian': TFDS dataset 'noise_research_int_labels' "
            "has no split 'trian'; its splits: 'test', 'train' (or slices and sums of them, such "
            "as 'train[:90%]+test')",
        ),
    ],
)
def test_the_command_line_prints_one_line_for_a_bad_dataset(data_dir, tmp_path, args, expected):
    process = _main(
        tmp_path / "run",
        "configs/classify/cifar10_resnet18.py",
        f"--config.data.data_dir={data_dir}",
        *args,
    )
    assert _error_lines(process) == [expected.format(data_dir=data_dir)]
    assert not (tmp_path / "run" / "checkpoints").exists()
