"""Real GAN training images from TFDS (array_record + grain, no TensorFlow): celeb_a, lsun/*,
cifar10 and any TFDS data set with an image feature.

`TfdsGanImages` has the interface of `shapes.ShapeBatches` (the batch-source contract, base.py):
`batch(step)` is this process's share of global batch `step`,

    {"image": (b, R, R, 3) float32 in [−1, 1], "position": (b,) int32}

with b = global_batch_size // process_count and `"position"` each row's global position, plus
`"mask"` (b,) float32 for evaluation sources. Positions index the split as classification's TFDS
source does (classification.py, module docstring):

- training (`train=True`): endless; the example at global position n is example
  `epoch_permutation(seed, n // N, N)[n % N]` of the N-example split (reshuffled every epoch
  from (seed, epoch)), and its optional horizontal flip is drawn from
  `augmentation_rng(seed, n)`; a batch is a pure function of (seed, step, process_index).
- evaluation (`train=False`): the split once, in order, never flipped: `batch(i)` covers global
  positions i·G … (i+1)·G − 1 for i < `num_batches`; positions past the end repeat the split
  from its start with `"mask"` 0, so a statistic weighted by the mask (FID's real-image
  statistics) sees every real image exactly once.

Preprocessing (`gan_crop_box`, then `crop_and_resize_gan`): the image is read as its stored bytes
(`open_encoded_image_source`) and decoded at full resolution, a window is cut out with integer
pixel edges (no pixel outside it reaches the filter), and the window is resized to R² with
Pillow's Lanczos filter (what `ANTIALIAS` named in older Pillow), in uint8, then mapped to
[−1, 1] (0 → −1, 255 → +1). No JPEG draft decoding: real-image statistics for FID are taken on
exactly these pixels. Per data set:

- `celeb_a` (aligned 178 × 218 faces): a named window `celeba_crop` (`CELEBA_CROPS`):
  `"dcgan_108"` (default) the central 108² (rows 55–162, columns 35–142), the crop of the DCGAN
  CelebA pipelines; `"progan_128"` the 128² centred on (x 89, y 121) (rows 57–184, columns
  25–152), progressive GAN's non-HQ CelebA (its dataset tool's `create_celeba`); `"square_178"`
  the central 178² (rows 20–197, the full width). Then resized to R.
- `lsun/<category>` (JPEGs of various sizes, short side usually 256): the central square of the
  short side, resized to R: the view of resizing the short side to R and centre-cropping,
  resampled once (progressive GAN's `create_lsun` crops and resizes in this order). An odd
  margin puts its extra pixel after the window.
- `cifar10` (32²): the image as it is; resized to R (Lanczos) when R ≠ 32.
- any other TFDS data set whose image feature holds uint8 gray or RGB images (e.g.
  `oxford_flowers102`): as LSUN, the central square resized to R.

Gray images are resized in one channel and replicated to RGB; palette and RGBA images are
converted to RGB first (the alpha channel dropped). Training may mirror images left–right
(`random_flip`, off by default). tensorflow_datasets and grain are imported inside the functions,
so the package imports without them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping

import numpy as np
from PIL import Image

from noise_research.data.base import (
    ENDLESS,
    Batch,
    ProcessSlice,
    check_integer,
    check_seed,
    default_num_workers,
    uint8_scale_to_signed_unit,
    worker_batches,
)
from noise_research.data.classification import augmentation_rng, epoch_permutation, open_image
from noise_research.data.tfds_images import (
    TfdsInputError,
    check_image_feature,
    errors_named_by,
    open_encoded_image_source,
)

PixelBox = tuple[int, int, int, int]
"""A window of an image, (left, top, right, bottom) in whole pixels: columns left … right − 1
and rows top … bottom − 1 (Pillow's `crop` box)."""

CELEBA_ALIGNED_SIZE = (178, 218)
"""(width, height) of every image of TFDS's `celeb_a` (the aligned and cropped CelebA)."""

CELEBA_CROPS: dict[str, PixelBox] = {
    "dcgan_108": (35, 55, 143, 163),
    "progan_128": (25, 57, 153, 185),
    "square_178": (0, 20, 178, 198),
}
"""The named windows of a `celeb_a` image (module docstring): DCGAN's central 108², progressive
GAN's 128² centred on (x 89, y 121), and the central 178²."""

DEFAULT_CELEBA_CROP = "dcgan_108"

MIN_RESOLUTION = 4
"""The smallest output side: the GAN generators start from 4 × 4 and double."""


def dataset_family(name: str) -> str:
    """The TFDS data set name without config and version: 'lsun/church_outdoor:3.1.0' -> 'lsun'."""
    return str(name).partition("/")[0].partition(":")[0]


def check_gan_resolution(resolution: int) -> int:
    """`resolution` as an int, or `TfdsInputError` naming it unless it is a power of two ≥ 4."""
    if (
        isinstance(resolution, bool)
        or not isinstance(resolution, int | np.integer)
        or resolution < MIN_RESOLUTION
        or resolution & (resolution - 1)
    ):
        raise TfdsInputError(
            [("resolution", resolution)],
            f"the image side must be a power of two >= {MIN_RESOLUTION} (4, 8, 16, ..., 1024)",
        )
    return int(resolution)


def check_celeba_crop(celeba_crop: str) -> str:
    """`celeba_crop`, or `TfdsInputError` naming it unless it is a key of `CELEBA_CROPS`."""
    if not isinstance(celeba_crop, str) or celeba_crop not in CELEBA_CROPS:
        raise TfdsInputError(
            [("celeba_crop", celeba_crop)],
            "not a named celeb_a crop; the crops: " + ", ".join(map(repr, CELEBA_CROPS)),
        )
    return celeba_crop


def centre_square_box(width: int, height: int) -> PixelBox:
    """The central square of a width × height image, side min(width, height) (an odd margin
    puts the extra pixel after the window)."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def gan_crop_box(
    name: str, width: int, height: int, celeba_crop: str = DEFAULT_CELEBA_CROP
) -> PixelBox:
    """The window of a width × height image of TFDS data set `name` that becomes the training
    image: `CELEBA_CROPS[celeba_crop]` for celeb_a, the central square for every other data set
    (module docstring).

    Raises:
      ValueError: a celeb_a image is not 178 × 218 (the named windows are of the aligned images).
      TfdsInputError: `celeba_crop` is not a named crop.
    """
    celeba_crop = check_celeba_crop(celeba_crop)
    if dataset_family(name) != "celeb_a":
        return centre_square_box(width, height)
    if (width, height) != CELEBA_ALIGNED_SIZE:
        raise ValueError(
            f"celeb_a images must be {CELEBA_ALIGNED_SIZE[0]} × {CELEBA_ALIGNED_SIZE[1]} "
            f"(width × height) for the crop {celeba_crop!r}, got {width} × {height}."
        )
    return CELEBA_CROPS[celeba_crop]


def crop_and_resize_gan(image: Image.Image, box: PixelBox, resolution: int) -> np.ndarray:
    """The `box` window of `image` resized to resolution² with Pillow's Lanczos filter:
    (resolution, resolution, 3) uint8 RGB.

    The window is cut first, so no pixel outside it reaches the filter; a window already
    resolution² is not resampled. Gray images are resized in one channel and replicated; other
    modes (palette, RGBA, ...) are converted to RGB first.
    """
    resolution = check_integer(resolution, "resolution", 1)
    width, height = image.size
    left, top, right, bottom = (int(edge) for edge in box)
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise ValueError(f"box {box} is not a window of a {width} × {height} image.")
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    window = image.crop((left, top, right, bottom))
    if window.size != (resolution, resolution):
        window = window.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(window if window.mode == "RGB" else window.convert("RGB"))


class TfdsGanImages:
    """Batch source of RGB GAN images from a TFDS data set, `{"image": (b, R, R, 3)}` float32 in
    [−1, 1] and `"position"` (b,) int32, plus `"mask"` (b,) float32 for evaluation (module
    docstring: positions, preprocessing per data set).

    Checked when the source is built, each a one-line `TfdsInputError` (a `ConfigError`) naming
    the argument or, where `config_keys` maps it, the config key that set it (`name`, `split`,
    `data_dir`, `resolution`, `celeba_crop`, `image_key`): a resolution that is not a power of
    two ≥ 4, an unknown celeb_a crop, an unknown data set (with the nearest names) or config, a
    split the data set lacks (with the splits it has), an image feature missing or not uint8
    gray or RGB, an empty split; a data set not prepared in array_record format in `data_dir`
    raises `DatasetNotPreparedError` (a `TfdsInputError`) with the command that prepares it.

    `iterate(start_step)` yields the batches of `batch`, built by `num_workers` processes
    (`worker_batches`; default: one per CPU core).

    Attributes:
      num_examples: examples in the split.
      num_batches: global batches that cover the split once (the evaluation loop's length).
      family: the data set's TFDS name without config and version ('celeb_a', 'lsun', ...),
        which chooses the preprocessing.
      crop_name: the `celeba_crop` used for celeb_a, None for other data sets.
      num_workers: processes of `iterate` (0: a thread of this process).
    """

    def __init__(
        self,
        name: str,
        split: str = "train",
        *,
        global_batch_size: int,
        resolution: int,
        train: bool,
        seed: int = 0,
        data_dir: str | os.PathLike | None = None,
        celeba_crop: str = DEFAULT_CELEBA_CROP,
        random_flip: bool = False,
        image_key: str = "image",
        process_index: int | None = None,
        process_count: int | None = None,
        num_workers: int | None = None,
        config_keys: Mapping[str, str] | None = None,
    ) -> None:
        self.process_slice = ProcessSlice(global_batch_size, process_index, process_count)
        self.global_batch_size = self.process_slice.global_batch_size
        self.name, self.split, self.image_key = name, split, image_key
        for value, argument in ((train, "train"), (random_flip, "random_flip")):
            if not isinstance(value, bool | np.bool_):
                raise ValueError(f"{argument} must be True or False, got {value!r}.")
        self.train, self.random_flip = bool(train), bool(random_flip)
        self.seed = check_seed(seed)
        self.num_workers = default_num_workers(num_workers)
        self.config_keys = dict(config_keys or {})
        with errors_named_by(self.config_keys):
            self.resolution = check_gan_resolution(resolution)
            self.celeba_crop = check_celeba_crop(celeba_crop)
            data_source = open_encoded_image_source(name, split, data_dir, image_key)
            self.num_examples = len(data_source)
            if self.num_examples == 0:
                raise TfdsInputError(
                    [("split", split)], f"TFDS dataset {name!r} has no examples in it"
                )
            features = data_source.dataset_info.features
            check_image_feature(features, name, image_key, data_source[0][image_key])
        # TFDS's own name (it accepts 'CelebA' for 'celeb_a') chooses the preprocessing.
        self.family = dataset_family(data_source.dataset_info.name)
        self.crop_name = self.celeba_crop if self.family == "celeb_a" else None
        self.num_batches = math.ceil(self.num_examples / self.global_batch_size)
        self._data_source = data_source

    def _index(self, position: int) -> int:
        """The split's index of the example at global `position`."""
        if self.train:
            epoch, offset = divmod(position, self.num_examples)
            return int(epoch_permutation(self.seed, epoch, self.num_examples)[offset])
        return position % self.num_examples

    def image(self, position: int) -> np.ndarray:
        """The (R, R, 3) uint8 image at global `position` (module docstring)."""
        image = open_image(self._data_source[self._index(position)][self.image_key])
        box = gan_crop_box(self.family, *image.size, self.celeba_crop)
        pixels = crop_and_resize_gan(image, box, self.resolution)
        if self.train and self.random_flip and augmentation_rng(self.seed, position).random() < 0.5:
            pixels = pixels[:, ::-1]
        return pixels

    def batch(self, step: int) -> Batch:
        """This process's images for training step `step`, or evaluation batch `step` (then
        with `"mask"`, 0 on the padding rows past the end of the split)."""
        if not self.train:
            check_integer(step, "step", 0, self.num_batches - 1)
        positions = np.asarray(self.process_slice.global_positions(step), np.int32)
        images = np.empty((len(positions), self.resolution, self.resolution, 3), np.uint8)
        for row, position in enumerate(positions):
            images[row] = self.image(int(position))
        batch = {"image": uint8_scale_to_signed_unit(images), "position": positions}
        if not self.train:
            batch["mask"] = (positions < self.num_examples).astype(np.float32)
        return batch

    def iterate(self, start_step: int) -> Iterator[Batch]:
        """`batch(start_step)`, `batch(start_step + 1)`, ... built by `num_workers` processes
        (`worker_batches`): without end for training, up to the last batch for evaluation. Close
        it (or drop it) to stop the workers."""
        if self.train:
            steps = range(check_integer(start_step, "start_step"), ENDLESS)
        else:
            steps = range(
                check_integer(start_step, "start_step", 0, self.num_batches), self.num_batches
            )
        return worker_batches(self.batch, steps, self.num_workers)
