"""Classification batch sources: embedded scikit-learn digits, and any TFDS data set via grain.

Both follow the batch-source contract (base.py): `batch(step)` is this process's share of the
global batch for `step`, a pure function of (seed, step, process_index), as

    {"image": (b, H, W, 3) float32 RGB in [0, 1], "label": (b,) int32, "mask": (b,) float32}

with b = global_batch_size // process_count. Gray data sets are replicated to 3 channels.
Normalisation (mean/std, [−1, 1], ...) is left to the model or task.

- Training sources (`train=True`) are endless: the example at global position n belongs to epoch
  n // N, the split is shuffled anew every epoch from (seed, epoch), and the augmentation of each
  example is drawn from (seed, n). `"mask"` is all ones.
- Evaluation sources (`train=False`) walk the split once, in order: `batch(i)` covers global
  positions i·G … (i+1)·G − 1 for i < `num_batches`. Positions past the end of the split repeat
  the split's examples from its start and have `"mask"` 0, so metrics weighted by the mask count
  every example exactly once. (The positive-noise paper evaluates on unshuffled test sets,
  DESIGN.md "Positive noise"; the in-order walk reproduces that.)

DESIGN.md, "Embedded data": machines without network use `DigitsBatches`, scikit-learn's 1797
8×8 handwritten digits, which ship with the package. tensorflow_datasets, grain and scikit-learn
are imported inside the functions that need them, so the package imports without them.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import numpy as np
from PIL import Image

from noise_research.data.base import ProcessSlice, check_integer, check_seed
from noise_research.data.tfds_images import open_array_record_source

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
EVAL_RESIZE_RATIO = 256 / 224
"""ImageNet evaluation: resize the short side to image_size·256/224, then centre-crop."""

# Independent random streams derived from a source's seed.
_PERMUTATION_STREAM = 0
_AUGMENTATION_STREAM = 1


def _check_bool(value: bool, argument_name: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{argument_name} must be True or False, got {value!r}.")
    return bool(value)


def to_rgb_unit(image: np.ndarray) -> np.ndarray:
    """An (H, W, 3) float32 image in [0, 1] from an (H, W), (H, W, 1) or (H, W, 3) uint8 one."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (0…255), got dtype {image.dtype}.")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(
            f"image must have shape (H, W), (H, W, 1) or (H, W, 3), got shape {image.shape}."
        )
    return np.broadcast_to(image, (*image.shape[:2], 3)).astype(np.float32) / 255.0


def resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resizes an (H, W, 3) float32 image to `size` = (height, width), Pillow bilinear per channel.

    Pillow antialiases when it shrinks; float mode "F" keeps the value scale exactly.
    """
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[..., channel], dtype=np.float32)).resize(
                (width, height), Image.Resampling.BILINEAR
            )
        )
        for channel in range(image.shape[-1])
    ]
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0)


def pad_and_random_crop(image: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-pads an (H, W, C) image by `padding` on every side and crops H × W back at a uniform
    offset: a random translation by up to `padding` pixels in each direction."""
    height, width = image.shape[:2]
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    top, left = rng.integers(0, 2 * padding + 1, size=2)
    return padded[top : top + height, left : left + width]


def random_resized_crop(image: np.ndarray, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """The Inception-style crop (Szegedy et al. 2015): a window of area fraction U(0.08, 1) and
    aspect ratio log-uniform in [3/4, 4/3], resized to image_size². After 10 windows that do not
    fit, the largest central window with the ratio clamped to [3/4, 4/3] is used."""
    height, width = image.shape[:2]
    log_ratio_range = np.log(RANDOM_RESIZED_CROP_RATIO)
    for _ in range(RANDOM_RESIZED_CROP_ATTEMPTS):
        area = height * width * rng.uniform(*RANDOM_RESIZED_CROP_SCALE)
        ratio = math.exp(rng.uniform(*log_ratio_range))
        crop_width = round(math.sqrt(area * ratio))
        crop_height = round(math.sqrt(area / ratio))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(rng.integers(0, height - crop_height + 1))
            left = int(rng.integers(0, width - crop_width + 1))
            break
    else:
        ratio = min(max(width / height, RANDOM_RESIZED_CROP_RATIO[0]), RANDOM_RESIZED_CROP_RATIO[1])
        crop_width = min(width, round(height * ratio))
        crop_height = min(height, round(width / ratio))
        top, left = (height - crop_height) // 2, (width - crop_width) // 2
    crop = image[top : top + crop_height, left : left + crop_width]
    return resize_rgb(crop, (image_size, image_size))


def resize_and_center_crop(image: np.ndarray, image_size: int) -> np.ndarray:
    """ImageNet evaluation: short side resized to round(image_size·256/224) (aspect kept), then
    the central image_size² window."""
    height, width = image.shape[:2]
    short_side = round(image_size * EVAL_RESIZE_RATIO)
    scale = short_side / min(height, width)
    new_height = max(short_side, round(height * scale))
    new_width = max(short_side, round(width * scale))
    resized = resize_rgb(image, (new_height, new_width))
    top, left = (new_height - image_size) // 2, (new_width - image_size) // 2
    return resized[top : top + image_size, left : left + image_size]


def random_horizontal_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirrors an (H, W, C) image left–right with probability 1/2."""
    return image[:, ::-1] if rng.random() < 0.5 else image


def _eval_indices_and_mask(positions: range, num_examples: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices of evaluation positions (wrapped past the end) and their 1/0 mask."""
    positions_array = np.arange(positions.start, positions.stop)
    return positions_array % num_examples, (positions_array < num_examples).astype(np.float32)


def _classification_batch(
    examples: list[tuple[np.ndarray, int]], mask: np.ndarray
) -> dict[str, np.ndarray]:
    """Stacks (image, label) pairs into the batch dict of the module docstring."""
    images, labels = zip(*examples, strict=True)
    return {
        "image": np.stack(images).astype(np.float32),
        "label": np.asarray(labels, dtype=np.int32),
        "mask": mask,
    }


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

    def _train_example(
        self, position: int, epoch_permutations: dict[int, np.ndarray]
    ) -> tuple[np.ndarray, int]:
        epoch, offset = divmod(position, self.num_examples)
        if epoch not in epoch_permutations:
            epoch_rng = np.random.default_rng([self.seed, _PERMUTATION_STREAM, epoch])
            epoch_permutations[epoch] = epoch_rng.permutation(self.num_examples)
        index = epoch_permutations[epoch][offset]
        rng = np.random.default_rng([self.seed, _AUGMENTATION_STREAM, position])
        image = pad_and_random_crop(self._images[index], self.max_shift, rng)
        return np.repeat(image, 3, axis=-1), int(self._labels[index])

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's examples for `step` (training) or evaluation batch `step`."""
        if not self.train:
            check_integer(step, "step", 0, self.num_batches - 1)
        positions = self.process_slice.global_positions(step)
        if self.train:
            epoch_permutations: dict[int, np.ndarray] = {}
            examples = [self._train_example(position, epoch_permutations) for position in positions]
            return _classification_batch(examples, np.ones(len(positions), np.float32))
        indices, mask = _eval_indices_and_mask(positions, self.num_examples)
        examples = [(np.repeat(self._images[i], 3, axis=-1), self._labels[i]) for i in indices]
        return _classification_batch(examples, mask)


def _has_small_images(data_source: Any, image_key: str) -> bool:
    """Whether the data set's image feature has a fixed height and width ≤ SMALL_IMAGE_MAX_SIDE."""
    height, width = data_source.dataset_info.features[image_key].shape[:2]
    return height is not None and width is not None and max(height, width) <= SMALL_IMAGE_MAX_SIDE


class TfdsClassificationBatches:
    """Batch source of (image, label) pairs from a TFDS data set (array_record + grain).

    Pipeline (grain `MapDataset` over `tfds.data_source`, no TensorFlow). Images are converted to
    RGB float32 in [0, 1] first; then, at `image_size`² output:
    - small-image data sets (fixed side ≤ 64 px, e.g. cifar10): training = resize to
      image_size² if needed, zero-pad 4 px and random-crop back, random horizontal flip;
      evaluation = resize to image_size² if needed.
    - other (ImageNet-sized) data sets: training = `random_resized_crop` (area 0.08–1, ratio
      3/4–4/3) + random horizontal flip; evaluation = `resize_and_center_crop` (short side
      image_size·256/224).
    Training shuffles with `seed`, reshuffles every epoch and draws each example's augmentation
    from (seed, global position) (grain's `random_map`); evaluation walks the split in order
    with padding (module docstring). A data set that is not prepared in array_record format
    raises `DatasetNotPreparedError`.

    Attributes:
      num_examples: examples in the split.
      num_batches: global batches that cover the split once (the evaluation loop's length).
      num_classes: the label feature's class count (None if it is not a `ClassLabel`).
      small_images: whether the small-image augmentation is used.
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
    ) -> None:
        import grain

        self.process_slice = ProcessSlice(global_batch_size, process_index, process_count)
        self.global_batch_size = self.process_slice.global_batch_size
        self.name, self.split = name, split
        self.image_key, self.label_key = image_key, label_key
        self.image_size = check_integer(image_size, "image_size", 1)
        self.train = _check_bool(train, "train")
        self.seed = check_seed(seed)

        data_source = open_array_record_source(name, split, data_dir)
        self.num_examples = len(data_source)
        if self.num_examples == 0:
            raise ValueError(f"split {split!r} of TFDS dataset {name!r} is empty.")
        first_example = data_source[0]
        for argument_name, key in (("image_key", image_key), ("label_key", label_key)):
            if key not in first_example:
                raise ValueError(
                    f"{argument_name}={key!r} is not a feature of TFDS dataset {name!r}; "
                    f"its features are {sorted(first_example)}."
                )
        self.num_batches = math.ceil(self.num_examples / self.global_batch_size)
        # A ClassLabel feature knows its class count; another integer label feature does not.
        self.num_classes = getattr(
            data_source.dataset_info.features[label_key], "num_classes", None
        )
        self.small_images = _has_small_images(data_source, image_key)

        examples = grain.MapDataset.source(data_source)
        if self.train:
            self._examples = (
                examples.seed(self.seed).shuffle().repeat().random_map(self._train_example)
            )
        else:
            self._examples = examples.map(self._eval_example)

    def _train_example(
        self, example: dict[str, Any], rng: np.random.Generator
    ) -> tuple[np.ndarray, int]:
        image = to_rgb_unit(example[self.image_key])
        if self.small_images:
            image = resize_rgb(image, (self.image_size, self.image_size))
            image = pad_and_random_crop(image, SMALL_IMAGE_PADDING, rng)
        else:
            image = random_resized_crop(image, self.image_size, rng)
        return random_horizontal_flip(image, rng), int(example[self.label_key])

    def _eval_example(self, example: dict[str, Any]) -> tuple[np.ndarray, int]:
        image = to_rgb_unit(example[self.image_key])
        if self.small_images:
            image = resize_rgb(image, (self.image_size, self.image_size))
        else:
            image = resize_and_center_crop(image, self.image_size)
        return image, int(example[self.label_key])

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's examples for `step` (training) or evaluation batch `step`."""
        if not self.train:
            check_integer(step, "step", 0, self.num_batches - 1)
        positions = self.process_slice.global_positions(step)
        if self.train:
            examples = [self._examples[position] for position in positions]
            return _classification_batch(examples, np.ones(len(positions), np.float32))
        indices, mask = _eval_indices_and_mask(positions, self.num_examples)
        return _classification_batch([self._examples[int(index)] for index in indices], mask)
