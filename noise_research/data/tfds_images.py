"""TFDS reading shared by the TFDS batch sources, and gray random crops from any TFDS image data
set.

DESIGN.md, "No TensorFlow in the core": real data sets (cifar10, imagenet2012, celeb_a, ...) are
read from array_record files with `tfds.data_source` and indexed by global example position
(here with grain's `MapDataset`), so a batch is a pure function of (seed, step, process_index)
(the batch-source contract, base.py), and the sources' `iterate(start_step)` can build batches
in grain's worker processes (`base.worker_batches`). Training crops for halftoning are gray 256²
crops (DESIGN.md, "NIB / halftoning").

tensorflow_datasets and grain are imported inside the functions, so the package imports without
them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from noise_research.data.base import (
    ENDLESS,
    Batch,
    ProcessSlice,
    check_integer,
    check_seed,
    default_num_workers,
    resize_gray,
    rgb_to_gray,
    uint8_scale_to_signed_unit,
    worker_batches,
)


class DatasetNotPreparedError(FileNotFoundError):
    """A TFDS data set is not available in array_record format in the given data_dir."""


def open_array_record_source(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    decoders: dict[str, Any] | None = None,
) -> Any:
    """`tfds.data_source(name, split, data_dir, decoders)` without downloading; a clear error if
    missing. `decoders` is TFDS's per-feature decoder mapping (e.g. `tfds.decode.SkipDecoding()`).

    Raises:
      DatasetNotPreparedError: the data set is not prepared in data_dir, or only in a format
        without random access (TFRecord); the message gives the command that prepares it.
    """
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(
            name, split=split, data_dir=data_dir, download=False, decoders=decoders
        )
    except tfds.core.registered.DatasetNotFoundError:
        raise
    except (NotImplementedError, FileNotFoundError, ValueError) as cause:
        builder = tfds.builder(name, data_dir=data_dir)
        random_access_formats = builder.info.available_file_formats().intersection(
            tfds.core.file_adapters.FileFormat.with_random_access()
        )
        if builder.is_prepared() and random_access_formats:
            raise  # prepared and readable: the cause is something else (a bad split name...)
        if builder.is_prepared():
            found = f"it is prepared at {builder.data_dir} only as {builder.info.file_format.value}"
        else:
            found = f"nothing is prepared at {builder.data_dir}"
        root = (
            os.fspath(data_dir)
            if data_dir is not None
            else tfds.core.constants.get_default_data_dir()
        )
        raise DatasetNotPreparedError(
            f"TFDS dataset {name!r} (split {split!r}) is not available in array_record format in "
            f"data_dir={root!r}: {found}.\n"
            "Prepare it in array_record format with\n"
            f"  tfds build {name} --data_dir={root} --file_format=array_record\n"
            "or, in Python,\n"
            f"  tfds.builder({name!r}, data_dir={root!r}, file_format='array_record')"
            ".download_and_prepare()"
        ) from cause


def open_encoded_image_source(
    name: str, split: str, data_dir: str | os.PathLike | None, image_key: str
) -> Any:
    """The array_record source of `open_array_record_source`, whose `image_key` feature comes as
    the stored encoded bytes (JPEG, PNG, ...) when it is a `tfds.features.Image`, so the caller
    decodes only what it needs (e.g. a JPEG drafted at a reduced scale); other features, and
    images stored as tensors, come decoded.

    `tfds.testing.mock_data` re-encodes its random images with TensorFlow when a decoder is
    given; where TensorFlow is missing that raises ImportError, and the decoded arrays are read.

    Raises:
      ValueError: `image_key` is not a feature of the data set.
    """
    import tensorflow_datasets as tfds

    decoded_source = open_array_record_source(name, split, data_dir)
    features = decoded_source.dataset_info.features
    if image_key not in features:
        raise ValueError(
            f"image_key={image_key!r} is not a feature of TFDS dataset {name!r}; "
            f"its features are {sorted(features.keys())}."
        )
    if not isinstance(features[image_key], tfds.features.Image) or len(decoded_source) == 0:
        return decoded_source
    encoded_source = open_array_record_source(
        name, split, data_dir, decoders={image_key: tfds.decode.SkipDecoding()}
    )
    try:
        encoded_source[0]
    except ImportError:
        return decoded_source
    return encoded_source


def gray_random_crop(image: np.ndarray, crop_size: int, rng: np.random.Generator) -> np.ndarray:
    """A gray `crop_size`² crop, (crop, crop, 1) float32 in [−1, 1], of a uint8 image.

    The image is converted to gray (0.299R + 0.587G + 0.114B); if its short side is below
    `crop_size` it is first resized up (Pillow Lanczos, aspect ratio kept) so the short side equals
    `crop_size`. The crop's top-left corner is drawn uniformly from `rng`.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (0…255), got dtype {image.dtype}.")
    gray = rgb_to_gray(image)
    height, width = gray.shape[:2]
    short_side = min(height, width)
    if short_side < crop_size:
        scale = crop_size / short_side
        new_size = (max(crop_size, round(height * scale)), max(crop_size, round(width * scale)))
        gray = resize_gray(gray, new_size)
        height, width = new_size
    top = int(rng.integers(0, height - crop_size + 1))
    left = int(rng.integers(0, width - crop_size + 1))
    return uint8_scale_to_signed_unit(gray[top : top + crop_size, left : left + crop_size])


class TfdsImageBatches:
    """Batch source of gray random crops from a TFDS image data set (array_record + grain).

    Pipeline (grain `MapDataset`): the data source, shuffled with `seed` and reshuffled every
    epoch, repeated without end, then a `random_map` whose generator grain seeds from (seed,
    global position) draws the crop position. The example at global position n is therefore fixed
    by (seed, n), and `batch(step)` returns this process's slice of the global batch for `step`,
    `{"image": (b, crop_size, crop_size, 1)}` float32 in [−1, 1] and `"position"`: (b,) int32,
    each row's global position, with b = global_batch_size // process_count. `iterate` yields
    the same batches from `num_workers` processes (`worker_batches`; default: one per CPU core).
    """

    def __init__(
        self,
        name: str,
        split: str = "train",
        *,
        global_batch_size: int,
        crop_size: int = 256,
        seed: int = 0,
        data_dir: str | os.PathLike | None = None,
        image_key: str = "image",
        process_index: int | None = None,
        process_count: int | None = None,
        num_workers: int | None = None,
    ) -> None:
        import grain

        self.process_slice = ProcessSlice(global_batch_size, process_index, process_count)
        self.global_batch_size = self.process_slice.global_batch_size
        self.name, self.split, self.image_key = name, split, image_key
        self.crop_size = check_integer(crop_size, "crop_size", 1)
        self.seed = check_seed(seed)
        self.num_workers = default_num_workers(num_workers)

        data_source = open_array_record_source(name, split, data_dir)
        if len(data_source) == 0:
            raise ValueError(f"split {split!r} of TFDS dataset {name!r} is empty.")
        first_example = data_source[0]
        if image_key not in first_example:
            raise ValueError(
                f"image_key={image_key!r} is not a feature of TFDS dataset {name!r}; "
                f"its features are {sorted(first_example)}."
            )
        self._examples = (
            grain.MapDataset.source(data_source)
            .seed(self.seed)
            .shuffle()
            .repeat()
            .random_map(
                lambda example, rng: gray_random_crop(example[image_key], self.crop_size, rng)
            )
        )

    def batch(self, step: int) -> Batch:
        """This process's crops for `step`: {"image": (b, crop, crop, 1) float32 in [−1, 1],
        "position": (b,) int32}."""
        positions = self.process_slice.global_positions(step)
        return {
            "image": np.stack([self._examples[position] for position in positions]),
            "position": np.asarray(positions, np.int32),
        }

    def iterate(self, start_step: int) -> Iterator[Batch]:
        """`batch(start_step)`, `batch(start_step + 1)`, ... without end, built by `num_workers`
        processes (`worker_batches`)."""
        start_step = check_integer(start_step, "start_step")
        return worker_batches(self.batch, range(start_step, ENDLESS), self.num_workers)
