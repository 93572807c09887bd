"""Classification batch sources: embedded scikit-learn digits, and any TFDS data set.

Both follow the batch-source contract (base.py): `batch(step)` is this process's share of the
global batch for `step`, a pure function of (seed, step, process_index), as

    {"image": (b, H, W, 3) RGB, "label": (b,) int32, "mask": (b,) float32, "position": (b,) int32}

with b = global_batch_size // process_count and `"position"` each row's global position in the
example stream (base.ProcessSlice). The image is float32 in [0, 1] for digits and uint8 (0…255)
for TFDS sets: a quarter of the bytes to build, hand over from the worker processes and copy to
the accelerator, where `unit_rgb` maps it to [0, 1]. Gray data sets are replicated to 3 channels.
Normalisation (mean/std, [−1, 1], ...) is left to the model or task.

- Training sources (`train=True`) are endless: the example at global position n is example
  `epoch_permutation(seed, n // N, N)[n % N]` of the split (shuffled anew every epoch from
  (seed, epoch)), and its augmentation is drawn from `augmentation_rng(seed, n)`. `"mask"` is all
  ones.
- Evaluation sources (`train=False`) walk the split once, in order: `batch(i)` covers global
  positions i·G … (i+1)·G − 1 for i < `num_batches`. Positions past the end of the split repeat
  the split's examples from its start and have `"mask"` 0, so metrics weighted by the mask count
  every example exactly once. (The positive-noise paper evaluates on unshuffled test sets,
  DESIGN.md "Positive noise"; the in-order walk reproduces that.)

The TFDS source augments in Pillow on uint8 RGB images (`train_augmentation`,
`eval_preprocessing`): it reads the stored JPEG/PNG bytes, decodes a JPEG at a reduced scale
(`Image.draft`, DCT-domain downscaling) when the crop is shrunk at least twofold, crops and
resizes in one antialiased bilinear `Image.resize(..., box=...)`, all in uint8. (Until this
version it decoded at full resolution and resized float32 channels one by one: the crops and
flips are the same draws, the pixels differ by uint8 rounding and resampling.)

DESIGN.md, "Embedded data": machines without network use `DigitsBatches`, scikit-learn's 1797
8×8 handwritten digits, which ship with the package. tensorflow_datasets and scikit-learn are
imported inside the functions that need them, so the package imports without them.
"""

from __future__ import annotations

import functools
import io
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from PIL import Image

from noise_research.data.base import (
    ENDLESS,
    Batch,
    ProcessSlice,
    check_integer,
    check_seed,
    default_num_workers,
    worker_batches,
)
from noise_research.data.tfds_images import (
    TfdsInputError,
    check_image_feature,
    check_label_feature,
    errors_named_by,
    open_encoded_image_source,
)

DIGITS_NATIVE_SIZE = 8
DIGITS_NUM_CLASSES = 10
DIGITS_MAX_VALUE = 16.0
"""scikit-learn's digits are 8×8 images with integer values 0 (background) … 16 (ink)."""

DIGITS_TEST_EXAMPLES = 297
DIGITS_SPLIT_SEED = 0
"""The fixed digits split: the 1797 examples are permuted by `default_rng(DIGITS_SPLIT_SEED)`;
the last `DIGITS_TEST_EXAMPLES` of the permutation are the test split, the first 1500 train."""

DIGITS_MAX_SHIFT_AT_NATIVE_SIZE = 2
"""Training translation of the digits: up to 2 pixels of the 8×8 original in each direction."""

SMALL_IMAGE_MAX_SIDE = 64
"""TFDS data sets whose images have a fixed side ≤ 64 px (cifar10, mnist, ...) get the
small-image augmentation (pad-4 random crop + flip); all others ImageNet's."""

SMALL_IMAGE_PADDING = 4
RANDOM_RESIZED_CROP_SCALE = (0.08, 1.0)
RANDOM_RESIZED_CROP_RATIO = (3 / 4, 4 / 3)
RANDOM_RESIZED_CROP_ATTEMPTS = 10
_LOG_RANDOM_RESIZED_CROP_RATIO = tuple(math.log(ratio) for ratio in RANDOM_RESIZED_CROP_RATIO)
EVAL_RESIZE_RATIO = 256 / 224
"""ImageNet evaluation: resize the short side to image_size·256/224, then centre-crop."""

# Independent random streams derived from a source's seed.
_PERMUTATION_STREAM = 0
_AUGMENTATION_STREAM = 1

Box = tuple[float, float, float, float]
"""A window of an image, (left, top, right, bottom) in pixel-edge coordinates: the pixel at
column x, row y covers [x, x + 1) × [y, y + 1)."""


def unit_rgb(images: Any) -> Any:
    """A batch's images as float32 in [0, 1]: uint8 (TFDS sets) divided by 255, float (digits)
    as it is. Works on numpy and JAX arrays (on the accelerator, inside a step)."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255)
    return images


def _check_bool(value: bool, argument_name: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{argument_name} must be True or False, got {value!r}.")
    return bool(value)


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The order in which training epoch `epoch` visits a split of `num_examples` examples: a
    permutation of 0 … num_examples − 1 drawn from (seed, epoch). Read-only; the latest few are
    cached (a batch can straddle two epochs)."""
    rng = np.random.default_rng([seed, _PERMUTATION_STREAM, epoch])
    permutation = rng.permutation(num_examples)
    permutation.flags.writeable = False
    return permutation


def augmentation_rng(seed: int, position: int) -> np.random.Generator:
    """The random generator of the training augmentation of the example at global `position`."""
    return np.random.default_rng([seed, _AUGMENTATION_STREAM, position])


def pad_and_random_crop(image: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-pads an (H, W, C) image by `padding` on every side and crops H × W back at a uniform
    offset: a random translation by up to `padding` pixels in each direction."""
    height, width = image.shape[:2]
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    top, left = rng.integers(0, 2 * padding + 1, size=2)
    return padded[top : top + height, left : left + width]


def open_image(value: bytes | np.ndarray) -> Image.Image:
    """A Pillow image of an example's image feature: stored (JPEG, PNG, ...) bytes, opened
    lazily (decoded on first use, so `crop_and_resize` can draft a JPEG), or a decoded uint8
    (H, W), (H, W, 1) or (H, W, 3) array."""
    if isinstance(value, bytes):
        return Image.open(io.BytesIO(value))
    array = np.asarray(value)
    if array.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (0…255), got dtype {array.dtype}.")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise ValueError(
            f"image must have shape (H, W), (H, W, 1) or (H, W, 3), got shape {array.shape}."
        )
    return Image.fromarray(array)


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator) -> Box:
    """The Inception-style crop window (Szegedy et al. 2015) of a width × height image: area
    fraction U(0.08, 1), aspect ratio (width / height) log-uniform in [3/4, 4/3], integer
    corners drawn uniformly. After 10 windows that do not fit, the largest central window with
    the ratio clamped to [3/4, 4/3]."""
    for _ in range(RANDOM_RESIZED_CROP_ATTEMPTS):
        area = height * width * rng.uniform(*RANDOM_RESIZED_CROP_SCALE)
        ratio = math.exp(rng.uniform(*_LOG_RANDOM_RESIZED_CROP_RATIO))
        crop_width = round(math.sqrt(area * ratio))
        crop_height = round(math.sqrt(area / ratio))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(rng.integers(0, height - crop_height + 1))
            left = int(rng.integers(0, width - crop_width + 1))
            return left, top, left + crop_width, top + crop_height
    ratio = min(max(width / height, RANDOM_RESIZED_CROP_RATIO[0]), RANDOM_RESIZED_CROP_RATIO[1])
    crop_width = min(width, round(height * ratio))
    crop_height = min(height, round(width / ratio))
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    return left, top, left + crop_width, top + crop_height


def eval_crop_box(width: int, height: int, image_size: int) -> Box:
    """ImageNet evaluation as one window of a width × height image: the window that becomes the
    central image_size² crop once the short side is resized to round(image_size·256/224),
    aspect kept (each side rounded to whole pixels)."""
    short_side = round(image_size * EVAL_RESIZE_RATIO)
    scale = short_side / min(height, width)
    resized_width = max(short_side, round(width * scale))
    resized_height = max(short_side, round(height * scale))
    left, top = (resized_width - image_size) // 2, (resized_height - image_size) // 2
    x_scale, y_scale = width / resized_width, height / resized_height
    return (
        left * x_scale,
        top * y_scale,
        (left + image_size) * x_scale,
        (top + image_size) * y_scale,
    )


def crop_and_resize(image: Image.Image, box: Box, image_size: int) -> Image.Image:
    """The `box` window of `image` resized to image_size² in RGB, with Pillow's antialiased
    bilinear filter in one `resize` call.

    A JPEG not yet decoded is decoded at 1/2, 1/4 or 1/8 scale (`Image.draft`, in the DCT
    domain) when the window still has at least image_size pixels per side at that scale; the
    box is scaled with it. Gray images are resampled in one channel and replicated last.
    """
    width, height = image.size
    left, top, right, bottom = box
    needed_size = (
        math.ceil(width * image_size / (right - left)),
        math.ceil(height * image_size / (bottom - top)),
    )
    draft = image.draft(image.mode, needed_size)
    if draft is not None:
        scale = draft[1][2] / width
        box = (left * scale, top * scale, right * scale, bottom * scale)
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    resized = image.resize((image_size, image_size), Image.Resampling.BILINEAR, box=box)
    return resized if resized.mode == "RGB" else resized.convert("RGB")


def train_augmentation(
    image: Image.Image, image_size: int, small_images: bool, rng: np.random.Generator
) -> np.ndarray:
    """A training view of `image`, (image_size, image_size, 3) uint8 RGB, drawn from `rng`.

    Small images: resized to image_size² if needed, zero-padded by 4 px and cropped back at a
    uniform offset (drawn as (top, left)). Others: `random_resized_crop_box` then
    `crop_and_resize`. Then mirrored left–right if `rng.random() < 1/2`.
    """
    if small_images:
        image = crop_and_resize(image, (0, 0, *image.size), image_size)
        top, left = rng.integers(0, 2 * SMALL_IMAGE_PADDING + 1, size=2) - SMALL_IMAGE_PADDING
        image = image.crop((left, top, left + image_size, top + image_size))  # zero outside
    else:
        box = random_resized_crop_box(*image.size, rng)
        image = crop_and_resize(image, box, image_size)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(image)


def eval_preprocessing(image: Image.Image, image_size: int, small_images: bool) -> np.ndarray:
    """The evaluation view of `image`, (image_size, image_size, 3) uint8 RGB: small images
    resized to image_size² if needed, others the `eval_crop_box` window resized."""
    box = (0, 0, *image.size) if small_images else eval_crop_box(*image.size, image_size)
    return np.asarray(crop_and_resize(image, box, image_size))


def _eval_mask(positions: np.ndarray, num_examples: int) -> np.ndarray:
    """1 for evaluation positions inside the split, 0 for the padding past its end."""
    return (positions < num_examples).astype(np.float32)


def digits_split_indices() -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices into scikit-learn's `load_digits()` order: the fixed split of
    `DIGITS_SPLIT_SEED` and `DIGITS_TEST_EXAMPLES` (1500 train, 297 test)."""
    from sklearn.datasets import load_digits

    permutation = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(load_digits().target))
    return permutation[:-DIGITS_TEST_EXAMPLES], permutation[-DIGITS_TEST_EXAMPLES:]


@functools.lru_cache(maxsize=4)
def digits_split(train: bool, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The digits `train` or test split: gray images (N, S, S, 1) float32 in [0, 1] upscaled to
    S = image_size with Pillow bicubic (clipped to [0, 1]), and labels (N,) int32. Read-only."""
    from sklearn.datasets import load_digits

    image_size = check_integer(image_size, "image_size", 1)
    digits = load_digits()
    indices = digits_split_indices()[0 if train else 1]
    images = np.stack(
        [
            np.asarray(
                Image.fromarray(digits.images[index].astype(np.float32) / DIGITS_MAX_VALUE).resize(
                    (image_size, image_size), Image.Resampling.BICUBIC
                )
            )
            for index in indices
        ]
    )
    images = np.clip(images, 0.0, 1.0)[..., None]
    labels = digits.target[indices].astype(np.int32)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


class DigitsBatches:
    """Batch source of scikit-learn's handwritten digits, RGB (gray replicated) in [0, 1].

    The embedded classification default (DESIGN.md, "Embedded data"): 10 classes, 1500 train and
    297 test examples (`digits_split`), which a small ResNet learns on a CPU in minutes.
    Training: reshuffled every epoch from (seed, epoch), each example translated by up to 2 px at
    the 8×8 scale (zero pad-and-crop of round(2·image_size/8) px at the upscaled size) from
    (seed, global position); no flips (digits are not mirror-invariant). Evaluation: the test
    split in order, padded as the module docstring says.

    Attributes:
      num_examples: examples in the split.
      num_batches: global batches that cover the split once (the evaluation loop's length).
      num_classes: 10.
    """

    def __init__(
        self,
        global_batch_size: int,
        *,
        train: bool,
        image_size: int = 32,
        seed: int = 0,
        process_index: int | None = None,
        process_count: int | None = None,
    ) -> None:
        self.process_slice = ProcessSlice(global_batch_size, process_index, process_count)
        self.global_batch_size = self.process_slice.global_batch_size
        self.train = _check_bool(train, "train")
        self.image_size = check_integer(image_size, "image_size", 1)
        self.seed = check_seed(seed)
        self._images, self._labels = digits_split(self.train, self.image_size)
        self.num_examples = len(self._labels)
        self.num_classes = DIGITS_NUM_CLASSES
        self.num_batches = math.ceil(self.num_examples / self.global_batch_size)
        self.max_shift = round(
            DIGITS_MAX_SHIFT_AT_NATIVE_SIZE * self.image_size / DIGITS_NATIVE_SIZE
        )

    def _train_example(self, position: int) -> tuple[np.ndarray, int]:
        epoch, offset = divmod(position, self.num_examples)
        index = epoch_permutation(self.seed, epoch, self.num_examples)[offset]
        rng = augmentation_rng(self.seed, position)
        image = pad_and_random_crop(self._images[index], self.max_shift, rng)
        return np.repeat(image, 3, axis=-1), int(self._labels[index])

    def batch(self, step: int) -> Batch:
        """This process's examples for `step` (training) or evaluation batch `step`."""
        if not self.train:
            check_integer(step, "step", 0, self.num_batches - 1)
        positions = np.asarray(self.process_slice.global_positions(step), np.int32)
        if self.train:
            examples = [self._train_example(int(position)) for position in positions]
            mask = np.ones(len(positions), np.float32)
        else:
            examples = [
                (np.repeat(self._images[index], 3, axis=-1), self._labels[index])
                for index in positions % self.num_examples
            ]
            mask = _eval_mask(positions, self.num_examples)
        images, labels = zip(*examples, strict=True)
        return {
            "image": np.stack(images).astype(np.float32),
            "label": np.asarray(labels, dtype=np.int32),
            "mask": mask,
            "position": positions,
        }


def _has_small_images(data_source: Any, image_key: str) -> bool:
    """Whether the data set's image feature has a fixed height and width ≤ SMALL_IMAGE_MAX_SIDE."""
    height, width = data_source.dataset_info.features[image_key].shape[:2]
    return height is not None and width is not None and max(height, width) <= SMALL_IMAGE_MAX_SIDE


class TfdsClassificationBatches:
    """Batch source of (image, label) pairs from a TFDS data set (array_record, no TensorFlow).

    Each example is read from `tfds.data_source` by index, its image feature as the stored bytes
    (`open_encoded_image_source`), and augmented in Pillow at `image_size`² output (module
    docstring):
    - small-image data sets (fixed side ≤ 64 px, e.g. cifar10): training = resize to
      image_size² if needed, zero-pad 4 px and random-crop back, random horizontal flip;
      evaluation = resize to image_size² if needed.
    - other (ImageNet-sized) data sets: training = random resized crop (area 0.08–1, ratio
      3/4–4/3) + random horizontal flip; evaluation = short side resized to image_size·256/224
      and the central image_size² crop (`train_augmentation`, `eval_preprocessing`).
    Training shuffles with `seed`, reshuffles every epoch (`epoch_permutation`) and draws each
    example's augmentation from (seed, global position) (`augmentation_rng`), as `DigitsBatches`
    does; evaluation walks the split in order with padding (module docstring). (grain's
    `MapDataset.shuffle` costs about 37 ms / N per example of an N-example split, 0.15 ms for
    the benchmark's 256 records, and `random_map` 0.04 ms, both holding the GIL; the numpy
    permutation is computed once per epoch.) A data set that is not prepared in array_record
    format raises `DatasetNotPreparedError`; an unknown data set, split or feature, images that
    are not uint8 gray or RGB (`tfds_images.IMAGES_EXPECTED`) and labels that are not integers
    raise `TfdsInputError` (a `ConfigError`) when the source is built.

    Labels are checked on the data: with `label_limit` (the model's class count), a batch
    holding a label outside [0, label_limit) raises `TfdsInputError` naming the data set, split,
    example and label, in `batch` and so from `iterate`'s workers too (a numpy comparison per
    batch). Without it the data set's `ClassLabel` count bounds the labels, if it has one.
    `config_keys` maps the arguments (`name`, `split`, `data_dir`, `label_limit`, ...) to the
    config keys that set them, for the errors to name.

    `iterate(start_step)` yields the batches of `batch` built by `num_workers` processes
    (`worker_batches`; default: one per CPU core): each builds whole batches on one core, so
    the rate grows with the cores (README, "Benchmarks").

    Attributes:
      num_examples: examples in the split.
      num_batches: global batches that cover the split once (the evaluation loop's length).
      num_classes: the label feature's class count (None if it is not a `ClassLabel`).
      label_limit: labels must lie in [0, label_limit): the `label_limit` argument, else
        `num_classes` (None: no bound known, labels unchecked).
      small_images: whether the small-image augmentation is used.
      num_workers: processes of `iterate` (0: a thread of this process).
    """

    def __init__(
        self,
        name: str,
        split: str = "train",
        *,
        global_batch_size: int,
        image_size: int,
        train: bool,
        seed: int = 0,
        data_dir: str | os.PathLike | None = None,
        image_key: str = "image",
        label_key: str = "label",
        process_index: int | None = None,
        process_count: int | None = None,
        num_workers: int | None = None,
        label_limit: int | None = None,
        config_keys: Mapping[str, str] | None = None,
    ) -> None:
        self.process_slice = ProcessSlice(global_batch_size, process_index, process_count)
        self.global_batch_size = self.process_slice.global_batch_size
        self.name, self.split = name, split
        self.image_key, self.label_key = image_key, label_key
        self.image_size = check_integer(image_size, "image_size", 1)
        self.train = _check_bool(train, "train")
        self.seed = check_seed(seed)
        self.num_workers = default_num_workers(num_workers)

        self.config_keys = dict(config_keys or {})
        with errors_named_by(self.config_keys):
            data_source = open_encoded_image_source(name, split, data_dir, image_key)
            features = data_source.dataset_info.features
            check_label_feature(features, name, label_key)
            self.num_examples = len(data_source)
            if self.num_examples == 0:
                raise TfdsInputError(
                    [("split", split)], f"TFDS dataset {name!r} has no examples in it"
                )
            check_image_feature(features, name, image_key, data_source[0][image_key])
        self.num_batches = math.ceil(self.num_examples / self.global_batch_size)
        # A ClassLabel feature knows its class count; another integer label feature does not.
        self.num_classes = getattr(features[label_key], "num_classes", None)
        if label_limit is None:
            self.label_limit, self._label_limit_argument = self.num_classes, "label_key"
        else:
            self.label_limit = check_integer(label_limit, "label_limit", 1)
            self._label_limit_argument = "label_limit"
        self.small_images = _has_small_images(data_source, image_key)
        self._data_source = data_source

    def _index(self, position: int) -> int:
        """The split's index of the example at global `position`."""
        if self.train:
            epoch, offset = divmod(position, self.num_examples)
            return int(epoch_permutation(self.seed, epoch, self.num_examples)[offset])
        return position % self.num_examples

    def _example(self, position: int) -> tuple[np.ndarray, int]:
        """The (image_size², 3) uint8 view and the label of the example at global `position`."""
        example = self._data_source[self._index(position)]
        image = open_image(example[self.image_key])
        if self.train:
            rng = augmentation_rng(self.seed, position)
            crop = train_augmentation(image, self.image_size, self.small_images, rng)
        else:
            crop = eval_preprocessing(image, self.image_size, self.small_images)
        return crop, int(example[self.label_key])

    def _check_labels(self, labels: np.ndarray, positions: np.ndarray) -> None:
        """Raises `TfdsInputError` at the first label outside [0, label_limit)."""
        limit = self.label_limit
        if limit is None:
            return
        outside = np.flatnonzero((labels < 0) | (labels >= limit))
        if outside.size == 0:
            return
        row = int(outside[0])
        position = int(positions[row])
        subject = (
            ("label_limit", limit)
            if self._label_limit_argument == "label_limit"
            else ("label_key", self.label_key)
        )
        raise TfdsInputError(
            [subject],
            f"TFDS dataset {self.name!r} split {self.split!r} example {self._index(position)} "
            f"(global position {position}) has label {int(labels[row])}; every label must be in "
            f"[0, {limit})",
            self.config_keys,
        )

    def batch(self, step: int) -> Batch:
        """This process's examples for `step` (training) or evaluation batch `step`.

        Raises:
          TfdsInputError: a label of the batch lies outside [0, label_limit).
        """
        if not self.train:
            check_integer(step, "step", 0, self.num_batches - 1)
        positions = np.asarray(self.process_slice.global_positions(step), np.int32)
        images = np.empty((len(positions), self.image_size, self.image_size, 3), np.uint8)
        labels = np.empty(len(positions), np.int64)
        for row, position in enumerate(positions):
            images[row], labels[row] = self._example(int(position))
        self._check_labels(labels, positions)
        if self.train:
            mask = np.ones(len(positions), np.float32)
        else:
            mask = _eval_mask(positions, self.num_examples)
        return {
            "image": images,
            "label": labels.astype(np.int32),
            "mask": mask,
            "position": positions,
        }

    def iterate(self, start_step: int) -> Iterator[Batch]:
        """`batch(start_step)`, `batch(start_step + 1)`, ... built by `num_workers` processes
        (`worker_batches`): without end for training, up to the last evaluation batch for
        evaluation. Close it (or drop it) to stop the workers."""
        if self.train:
            steps = range(check_integer(start_step, "start_step"), ENDLESS)
        else:
            steps = range(
                check_integer(start_step, "start_step", 0, self.num_batches), self.num_batches
            )
        return worker_batches(self.batch, steps, self.num_workers)
