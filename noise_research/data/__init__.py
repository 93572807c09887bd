"""Data: the batch-source contract, procedural images, scikit-image samples, TFDS + grain,
classification sources (scikit-learn digits, TFDS), GAN images from TFDS.

TFDS, grain and scikit-learn are imported lazily inside the functions that use them, so this
package imports without them.
"""

from noise_research.data.base import (
    BatchSource,
    ProcessSlice,
    resize_gray,
    rgb_to_gray,
    uint8_scale_to_signed_unit,
    worker_batches,
)
from noise_research.data.classification import (
    DigitsBatches,
    TfdsClassificationBatches,
    augmentation_rng,
    crop_and_resize,
    digits_split,
    digits_split_indices,
    epoch_permutation,
    eval_crop_box,
    eval_preprocessing,
    open_image,
    pad_and_random_crop,
    random_resized_crop_box,
    train_augmentation,
)
from noise_research.data.distortions import (
    DISTORTIONS,
    Distortion,
    apply_distortion,
    gradient_saliency,
    image_gradient_saliency,
    save_distortion_gallery,
)
from noise_research.data.gan_images import (
    CELEBA_CROPS,
    TfdsGanImages,
    check_gan_resolution,
    crop_and_resize_gan,
    gan_crop_box,
)
from noise_research.data.procedural import (
    ComicBatches,
    comic_image,
    constant_gray_batch,
    gray_ramp,
    gray_steps,
)
from noise_research.data.sample_images import SAMPLE_IMAGE_NAMES, sample_images
from noise_research.data.shapes import FACTOR_CLASSES, ShapeBatches, shape_factors, shape_image
from noise_research.data.tfds_images import (
    DatasetNotPreparedError,
    TfdsImageBatches,
    TfdsInputError,
    gray_random_crop,
    open_array_record_source,
    open_encoded_image_source,
)

__all__ = [
    "CELEBA_CROPS",
    "DISTORTIONS",
    "FACTOR_CLASSES",
    "SAMPLE_IMAGE_NAMES",
    "BatchSource",
    "ComicBatches",
    "DatasetNotPreparedError",
    "DigitsBatches",
    "Distortion",
    "ProcessSlice",
    "ShapeBatches",
    "TfdsClassificationBatches",
    "TfdsGanImages",
    "TfdsImageBatches",
    "TfdsInputError",
    "apply_distortion",
    "augmentation_rng",
    "check_gan_resolution",
    "comic_image",
    "constant_gray_batch",
    "crop_and_resize",
    "crop_and_resize_gan",
    "digits_split",
    "digits_split_indices",
    "epoch_permutation",
    "eval_crop_box",
    "eval_preprocessing",
    "gan_crop_box",
    "gradient_saliency",
    "gray_ramp",
    "gray_random_crop",
    "gray_steps",
    "image_gradient_saliency",
    "open_array_record_source",
    "open_encoded_image_source",
    "open_image",
    "pad_and_random_crop",
    "random_resized_crop_box",
    "resize_gray",
    "rgb_to_gray",
    "sample_images",
    "save_distortion_gallery",
    "shape_factors",
    "shape_image",
    "train_augmentation",
    "uint8_scale_to_signed_unit",
    "worker_batches",
]
