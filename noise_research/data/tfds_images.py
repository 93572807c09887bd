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

import contextlib
import difflib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from noise_research.config_schema import ConfigError
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


class TfdsInputError(ConfigError):
    """An input a TFDS data set refuses: an unknown data set, split or feature, images that are not
    uint8 gray or RGB, a label outside the model's classes.

    The message is one line, `<subject>: <reason>`: the subject is the source argument at fault
    (`split='trian'`) or, where the caller passed `config_keys`, the config key that set it
    (`config.data.train_split = 'trian'`); the reason says what is wrong and what is allowed or
    what to do. A `ConfigError` (so a `ValueError`), and picklable: raised while a batch is built
    in a worker process (`base.worker_batches`), it reaches the main process as itself.

    Attributes:
      subjects: `(argument, value)` pairs that may be at fault, most specific first; the message
        names the first with a config key, else the first.
      reason: what is wrong and what is allowed or what to do.
      config_keys: source argument -> dotted config key (without `config.`) that set it.
    """

    def __init__(
        self,
        subjects: Sequence[tuple[str, Any]],
        reason: str,
        config_keys: Mapping[str, str] | None = None,
    ) -> None:
        self.subjects = tuple((str(argument), value) for argument, value in subjects)
        self.reason = reason
        self.config_keys = dict(config_keys or {})
        super().__init__(f"{self.subject}: {reason}")

    @property
    def subject(self) -> str:
        """`config.<key> = <value>` of the first subject with a config key, else
        `<argument>=<value>` of the first subject."""
        for argument, value in self.subjects:
            if argument in self.config_keys:
                return f"config.{self.config_keys[argument]} = {value!r}"
        argument, value = self.subjects[0]
        return f"{argument}={value!r}"

    def for_config(self, config_keys: Mapping[str, str] | None) -> TfdsInputError:
        """The same error named by the config keys that set the source's arguments."""
        if not config_keys:
            return self
        return type(self)(self.subjects, self.reason, {**self.config_keys, **config_keys})

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.subjects, self.reason, self.config_keys)


class DatasetNotPreparedError(TfdsInputError, FileNotFoundError):
    """A TFDS data set is not available in array_record format in the given data_dir."""


@contextlib.contextmanager
def errors_named_by(config_keys: Mapping[str, str] | None) -> Iterator[None]:
    """Re-raises a `TfdsInputError` of the block named by `config_keys` (`for_config`)."""
    try:
        yield
    except TfdsInputError as error:
        if not config_keys:
            raise
        raise error.for_config(config_keys) from error


class _WithoutVariantFolderWarnings(logging.Filter):
    """Drops TFDS's 'Variant folder ... has no dataset_info.json' warnings: probing a data set
    that is not prepared logs one per look, and the error raised says it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Variant folder ")


@contextlib.contextmanager
def _quiet_tfds_probing() -> Iterator[None]:
    absl_logger = logging.getLogger("absl")
    quiet = _WithoutVariantFolderWarnings()
    absl_logger.addFilter(quiet)
    try:
        yield
    finally:
        absl_logger.removeFilter(quiet)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _data_dir_root(data_dir: str | os.PathLike | None) -> str:
    import tensorflow_datasets as tfds

    return (
        os.fspath(data_dir) if data_dir is not None else tfds.core.constants.get_default_data_dir()
    )


def _unknown_name_reason(name: str, data_dir: str | os.PathLike | None, cause: Exception) -> str:
    """Why `name` names no TFDS data set, with the nearest known names."""
    import tensorflow_datasets as tfds

    try:
        dataset_name, kwargs = tfds.core.naming.parse_builder_name_kwargs(name)
        base = str(dataset_name)
    except Exception:  # an unparsable name: nothing more to say than TFDS's first line
        return f"not a TFDS dataset name: {_one_line(str(cause).splitlines()[0])}"
    typed = name.partition("/")[0].partition(":")[0]  # as typed: TFDS snake-cases CamelCase
    try:
        builder_class = tfds.builder_cls(base)
    except Exception:  # an unknown (or unloadable) base name
        builder_class = None
    if builder_class is None:
        try:
            known = tfds.list_builders(with_community_datasets=False)
        except Exception:  # the suggestion is optional
            known = []
        close = difflib.get_close_matches(typed, known, n=3)
        hint = (
            "; did you mean " + " or ".join(repr(match) for match in close) + "?"
            if close
            else "; the known ones: https://www.tensorflow.org/datasets/catalog"
        )
        return (
            f"unknown TFDS dataset: not in TFDS's catalog nor prepared in data_dir "
            f"{_data_dir_root(data_dir)!r}{hint}"
        )
    configs = [config.name for config in builder_class.BUILDER_CONFIGS or ()]
    config = kwargs.get("config")
    if config is not None and isinstance(config, str) and config not in configs:
        listed = ", ".join(repr(f"{base}/{known}") for known in configs) or "none"
        return f"TFDS dataset {base!r} has no config {config!r}; its configs: {listed}"
    # Another refusal (a version TFDS cannot load, ...): TFDS's words after its preamble
    # 'Failed to construct dataset "name", builder_kwargs "{...}": '.
    detail = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    detail = detail.rsplit('": ', 1)[-1]
    return f"TFDS cannot load it: {_one_line(detail)}"


def _split_names(split: str) -> list[str]:
    """The split names a TFDS split expression reads: 'train[:90%]+test' -> ['train', 'test']."""
    return [part.split("[", 1)[0].strip() for part in str(split).split("+")]


def open_array_record_source(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    decoders: dict[str, Any] | None = None,
) -> Any:
    """`tfds.data_source(name, split, data_dir, decoders)` without downloading; one clear line if
    it cannot be read. `decoders` is TFDS's per-feature decoder mapping (e.g.
    `tfds.decode.SkipDecoding()`).

    Raises:
      TfdsInputError: `name` is not a TFDS data set (with the nearest known names), names a
        config it lacks or a version TFDS cannot load, or `split` names a split it lacks (with
        the splits it has).
      DatasetNotPreparedError: the data set is not prepared in data_dir, or only in a format
        without random access (TFRecord); the message gives the command that prepares it.
    """
    with _quiet_tfds_probing():
        return _open_array_record_source(name, split, data_dir, decoders)


def _open_array_record_source(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None,
    decoders: dict[str, Any] | None,
) -> Any:
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(
            name, split=split, data_dir=data_dir, download=False, decoders=decoders
        )
    except tfds.core.registered.DatasetNotFoundError as cause:
        raise TfdsInputError(
            [("name", name)], _unknown_name_reason(name, data_dir, cause)
        ) from cause
    # Not prepared: NotImplementedError / FileNotFoundError, or KeyError("splits is empty") for a
    # catalog data set with no files at all (tfds 4.9.10); the checks below tell which.
    except (NotImplementedError, FileNotFoundError, ValueError, AssertionError, KeyError) as cause:
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except Exception as builder_error:  # a config or version TFDS refuses
            reason = _unknown_name_reason(name, data_dir, builder_error)
            raise TfdsInputError([("name", name)], reason) from cause
        random_access_formats = builder.info.available_file_formats().intersection(
            tfds.core.file_adapters.FileFormat.with_random_access()
        )
        if builder.is_prepared() and random_access_formats:
            splits = sorted(builder.info.splits.keys())
            missing = [part for part in _split_names(split) if part not in splits]
            if missing:
                raise TfdsInputError(
                    [("split", split)],
                    f"TFDS dataset {name!r} has no split {missing[0]!r}; its splits: "
                    + ", ".join(map(repr, splits))
                    + " (or slices and sums of them, such as 'train[:90%]+test')",
                ) from cause
            raise  # prepared and readable: the cause is something else
        if builder.is_prepared():
            found = f"it is prepared at {builder.data_dir} only as {builder.info.file_format.value}"
        else:
            found = f"nothing is prepared at {builder.data_dir}"
        root = _data_dir_root(data_dir)
        raise DatasetNotPreparedError(
            [("name", name)],
            f"TFDS dataset {name!r} (split {split!r}) is not available in array_record format in "
            f"data_dir {root!r} ({found}): prepare it with "
            f"`tfds build {name} --data_dir={root} --file_format=array_record` (or, in Python, "
            f"`tfds.builder({name!r}, data_dir={root!r}, file_format='array_record')"
            ".download_and_prepare()`), or give the data_dir where it is prepared",
        ) from cause


IMAGES_EXPECTED = "uint8 (0..255) gray or RGB images, of shape (H, W), (H, W, 1) or (H, W, 3)"
"""The images every TFDS source reads. Gray images are replicated to RGB (classification) or
used as they are (halftoning); RGB images are converted to gray with the luma weights
(halftoning). Nothing else is converted (`image_problem`)."""


def image_problem(dtype: Any, shape: Sequence[int | None]) -> str | None:
    """Why images of `dtype` and `shape` (None: any size) are refused, or None if they are the
    `IMAGES_EXPECTED` kind.

    Refused rather than converted: float images (their value range, [0, 1], [0, 255] or
    [−1, 1], is not recorded in the data set), other integer depths (uint16, ...), and RGBA (an
    alpha channel can be dropped or composited over black or white: a choice for the data set,
    not for the reader). The stored files of an Image feature declared uint8 gray or RGB are
    decoded to its channels as TFDS decodes them (a palette expanded, an alpha channel dropped).
    """
    dtype, shape = np.dtype(dtype), tuple(shape)
    if np.issubdtype(dtype, np.floating):
        return "float images are refused: their value range is not known"
    if dtype != np.uint8:
        return f"{dtype} images are refused"
    if len(shape) == 3 and shape[-1] == 4:
        return "RGBA images are refused: drop or composite the alpha channel in the data set"
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[-1] not in (1, 3, None)):
        return "other shapes are refused"
    return None


def check_image_feature(
    features: Mapping[str, Any], name: str, image_key: str, example_image: Any = None
) -> None:
    """Raises `TfdsInputError` unless `features[image_key]` holds `IMAGES_EXPECTED`: checked on the
    data set's metadata, and on `example_image` when it is a decoded array."""
    check_feature_key(features, name, "image_key", image_key)
    feature = features[image_key]
    subjects = [("image_key", image_key), ("name", name)]
    try:
        found = [(np.dtype(feature.np_dtype), tuple(feature.shape))]
    except (AttributeError, TypeError):  # a nested feature (FeaturesDict, Sequence, ...)
        raise TfdsInputError(
            subjects,
            f"TFDS dataset {name!r} feature {image_key!r} is a {type(feature).__name__}, not an "
            f"image; expected {IMAGES_EXPECTED}",
        ) from None
    if isinstance(example_image, np.ndarray):
        found.append((example_image.dtype, example_image.shape))
    for dtype, shape in found:
        problem = image_problem(dtype, shape)
        if problem is not None:
            raise TfdsInputError(
                subjects,
                f"TFDS dataset {name!r} feature {image_key!r} holds {dtype} images of shape "
                f"{shape}; expected {IMAGES_EXPECTED} ({problem})",
            )


def check_label_feature(features: Mapping[str, Any], name: str, label_key: str) -> None:
    """Raises `TfdsInputError` unless `features[label_key]` holds integer class labels."""
    check_feature_key(features, name, "label_key", label_key)
    feature = features[label_key]
    dtype, shape = getattr(feature, "np_dtype", None), getattr(feature, "shape", None)
    if not (isinstance(dtype, type | np.dtype) and np.issubdtype(dtype, np.integer)) or shape != ():
        raise TfdsInputError(
            [("label_key", label_key), ("name", name)],
            f"TFDS dataset {name!r} feature {label_key!r} is a {type(feature).__name__} "
            f"(dtype {dtype}, shape {shape}); expected integer class labels of shape ()",
        )


def check_feature_key(features: Mapping[str, Any], name: str, argument: str, key: str) -> None:
    """Raises `TfdsInputError` naming `argument` unless `key` is a feature of the data set."""
    if key not in features:
        raise TfdsInputError(
            [(argument, key)],
            f"not a feature of TFDS dataset {name!r}; its features: "
            + ", ".join(map(repr, sorted(features.keys()))),
        )


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
      TfdsInputError: as `open_array_record_source`, or `image_key` is not a feature of the data
        set.
    """
    import tensorflow_datasets as tfds

    decoded_source = open_array_record_source(name, split, data_dir)
    features = decoded_source.dataset_info.features
    check_feature_key(features, name, "image_key", image_key)
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

    An unknown data set, split or image feature, and images that are not `IMAGES_EXPECTED`, raise
    `TfdsInputError` when the source is built (a data set not prepared in array_record format:
    `DatasetNotPreparedError`); `config_keys` maps the arguments (`name`, `split`, `data_dir`,
    `image_key`) to the config keys that set them, for the error to name.
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
        config_keys: Mapping[str, str] | None = None,
    ) -> None:
        import grain

        self.process_slice = ProcessSlice(global_batch_size, process_index, process_count)
        self.global_batch_size = self.process_slice.global_batch_size
        self.name, self.split, self.image_key = name, split, image_key
        self.crop_size = check_integer(crop_size, "crop_size", 1)
        self.seed = check_seed(seed)
        self.num_workers = default_num_workers(num_workers)

        with errors_named_by(config_keys):
            data_source = open_array_record_source(name, split, data_dir)
            if len(data_source) == 0:
                raise TfdsInputError(
                    [("split", split)], f"TFDS dataset {name!r} has no examples in it"
                )
            features = data_source.dataset_info.features
            check_feature_key(features, name, "image_key", image_key)
            check_image_feature(features, name, image_key, np.asarray(data_source[0][image_key]))
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
