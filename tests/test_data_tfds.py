"""Tests for TfdsImageBatches: tfds.data_source (array_record) + grain, without TensorFlow."""

import itertools
import json
import subprocess
import sys

import chex
import numpy as np
import pytest
import tensorflow_datasets as tfds

from noise_research.data import (
    BatchSource,
    DatasetNotPreparedError,
    TfdsImageBatches,
    gray_random_crop,
    open_encoded_image_source,
    resize_gray,
    rgb_to_gray,
)

MOCK_EXAMPLES = 5


class NoiseResearchTinyImages(tfds.core.GeneratorBasedBuilder):
    """Six random 20 × 30 RGB images stored as a uint8 tensor (writing it needs no TensorFlow)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        image = tfds.features.Tensor(shape=(20, 30, 3), dtype=np.uint8)
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict({"image": image})
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        rng = np.random.default_rng(0)
        for index in range(6):
            yield index, {"image": rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)}


def _mock_cifar10_batches(**kwargs) -> TfdsImageBatches:
    kwargs.setdefault("process_index", 0)
    kwargs.setdefault("process_count", 1)
    kwargs.setdefault("num_workers", 2)
    return TfdsImageBatches("cifar10", **kwargs)


@pytest.fixture
def mock_cifar10():
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        yield tfds.data_source("cifar10", split="train")


@pytest.fixture
def tiny_images_data_dir(tmp_path):
    NoiseResearchTinyImages(data_dir=tmp_path, file_format="array_record").download_and_prepare()
    return tmp_path


def test_batches_have_the_contract_shape_and_range(mock_cifar10):
    source = _mock_cifar10_batches(global_batch_size=4, crop_size=16, seed=3)
    assert isinstance(source, BatchSource)
    batch = source.batch(2)
    assert set(batch) == {"image", "position"}
    chex.assert_shape(batch["image"], (4, 16, 16, 1))
    assert batch["image"].dtype == np.float32
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    assert batch["position"].dtype == np.int32
    np.testing.assert_array_equal(batch["position"], [8, 9, 10, 11])


def test_iterate_yields_exactly_the_batches_of_batch(mock_cifar10):
    source = _mock_cifar10_batches(
        global_batch_size=4, crop_size=16, seed=3, process_index=1, process_count=2
    )
    batches = list(itertools.islice(source.iterate(4), 3))
    for step, batch in enumerate(batches, start=4):
        np.testing.assert_array_equal(batch["position"], [4 * step + 2, 4 * step + 3])
        chex.assert_trees_all_equal(batch, source.batch(step))
    assert not np.array_equal(batches[0]["image"], batches[1]["image"])


def test_batch_is_a_pure_function_of_seed_and_step(mock_cifar10):
    first = _mock_cifar10_batches(global_batch_size=4, crop_size=16, seed=3)
    second = _mock_cifar10_batches(global_batch_size=4, crop_size=16, seed=3)
    # Built anew and asked out of order (a resumed run), the batches are the same.
    np.testing.assert_array_equal(first.batch(7)["image"], second.batch(7)["image"])
    np.testing.assert_array_equal(first.batch(2)["image"], second.batch(2)["image"])
    assert not np.array_equal(first.batch(2)["image"], first.batch(3)["image"])
    other_seed = _mock_cifar10_batches(global_batch_size=4, crop_size=16, seed=4)
    assert not np.array_equal(first.batch(2)["image"], other_seed.batch(2)["image"])


def test_global_batch_is_the_same_for_any_process_count(mock_cifar10):
    global_batches = []
    for process_count in (1, 2, 4):
        shards = [
            _mock_cifar10_batches(
                global_batch_size=8,
                crop_size=8,
                seed=1,
                process_index=process_index,
                process_count=process_count,
            ).batch(5)
            for process_index in range(process_count)
        ]
        for shard in shards:
            chex.assert_shape(shard["image"], (8 // process_count, 8, 8, 1))
        global_batches.append({key: np.concatenate([s[key] for s in shards]) for key in shards[0]})
    np.testing.assert_array_equal(global_batches[0]["position"], range(40, 48))
    chex.assert_trees_all_equal(*global_batches)


def test_small_images_are_upscaled_and_each_epoch_is_a_permutation(mock_cifar10):
    # cifar10 is 32 × 32: a 64 crop is the whole image resized up, so each crop must equal the gray,
    # 2× Lanczos-upscaled version of exactly one source example.
    upscaled = [
        np.clip(resize_gray(rgb_to_gray(mock_cifar10[i]["image"]), (64, 64)) / 127.5 - 1, -1, 1)
        for i in range(MOCK_EXAMPLES)
    ]
    source = _mock_cifar10_batches(global_batch_size=MOCK_EXAMPLES, crop_size=64, seed=0)
    for step in (0, 1):
        crops = source.batch(step)["image"]
        chex.assert_shape(crops, (MOCK_EXAMPLES, 64, 64, 1))
        matches = [
            [i for i, candidate in enumerate(upscaled) if np.allclose(crop, candidate, atol=1e-5)]
            for crop in crops
        ]
        assert all(len(match) == 1 for match in matches)
        assert sorted(match[0] for match in matches) == list(range(MOCK_EXAMPLES))


def test_gray_random_crop_upscales_the_short_side_keeping_the_aspect_ratio():
    # A 16 × 24 horizontal ramp: upscaled to 32 × 48, a 32 crop spans 2/3 of the ramp's columns.
    ramp = np.repeat(np.linspace(0, 255, 24)[None, :], 16, axis=0).astype(np.uint8)
    crop = gray_random_crop(ramp, 32, np.random.default_rng(0))
    chex.assert_shape(crop, (32, 32, 1))
    np.testing.assert_allclose(crop, np.broadcast_to(crop[:1], crop.shape), atol=1e-5)  # equal rows
    assert 0.5 * 2 < crop.max() - crop.min() < 0.8 * 2


def test_gray_random_crop_of_a_large_image_is_a_window_of_its_gray():
    image = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    gray = rgb_to_gray(image) / 127.5 - 1
    crop = gray_random_crop(image, 16, np.random.default_rng(2))
    windows = np.lib.stride_tricks.sliding_window_view(gray[..., 0], (16, 16))
    assert np.any(np.all(np.abs(windows - crop[..., 0]) < 1e-5, axis=(2, 3)))


def test_unknown_image_key_is_reported(mock_cifar10):
    with pytest.raises(ValueError, match=r"image_key='picture'.*label"):
        _mock_cifar10_batches(global_batch_size=2, image_key="picture")


def test_missing_dataset_error_names_dataset_data_dir_and_build_command(tmp_path):
    with pytest.raises(DatasetNotPreparedError) as error:
        _mock_cifar10_batches(global_batch_size=2, data_dir=tmp_path)
    message = str(error.value)
    assert "'cifar10'" in message
    assert str(tmp_path) in message
    assert "nothing is prepared" in message
    assert f"tfds build cifar10 --data_dir={tmp_path} --file_format=array_record" in message


def test_prepared_array_record_dataset_is_read_without_mock(tiny_images_data_dir):
    source = TfdsImageBatches(
        "noise_research_tiny_images",
        global_batch_size=4,
        crop_size=16,
        data_dir=tiny_images_data_dir,
        process_index=0,
        process_count=1,
    )
    chex.assert_shape(source.batch(3)["image"], (4, 16, 16, 1))
    # Images stored as tensors (not as tfds.features.Image) are read decoded.
    example = open_encoded_image_source(
        "noise_research_tiny_images", "train", tiny_images_data_dir, "image"
    )[0]
    assert example["image"].shape == (20, 30, 3) and example["image"].dtype == np.uint8


def test_tfrecord_only_dataset_error_says_so(tiny_images_data_dir):
    # Writing TFRecord needs TensorFlow, so mark the prepared data set as TFRecord-only instead.
    info_path = tiny_images_data_dir / "noise_research_tiny_images" / "1.0.0" / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info["fileFormat"] = "tfrecord"
    info_path.write_text(json.dumps(info))
    with pytest.raises(
        DatasetNotPreparedError, match=r"(?s)only as tfrecord.*--file_format=array_record"
    ):
        TfdsImageBatches(
            "noise_research_tiny_images",
            global_batch_size=2,
            data_dir=tiny_images_data_dir,
            process_index=0,
            process_count=1,
        )


def test_data_package_imports_without_tfds_or_grain():
    check = (
        "import sys, noise_research.data; "
        "assert 'tensorflow_datasets' not in sys.modules and 'grain' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", check], check=True)
