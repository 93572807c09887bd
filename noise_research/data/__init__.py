"""Data: the batch-source contract, procedural images, scikit-image samples, TFDS + grain,
classification sources (scikit-learn digits, TFDS).

TFDS, grain and scikit-learn are imported lazily inside the functions that use them, so this
package imports without them.
"""

from noise_research.data.base import (
    BatchSource,
    ProcessSlice,
    resize_gray,
    rgb_to_gray,
    uint8_scale_to_signed_unit,
)
from noise_research.data.classification import (
    DigitsBatches,
    TfdsClassificationBatches,
    digits_split,
    digits_split_indices,
    pad_and_random_crop,
    random_horizontal_flip,
    random_resized_crop,
    resize_and_center_crop,
    resize_rgb,
    to_rgb_unit,
)
from noise_research.data.distortions import (
    DISTORTIONS,
    Distortion,
    apply_distortion,
    gradient_saliency,
    image_gradient_saliency,
    save_distortion_gallery,
)
from noise_research.data.procedural import (
    ComicBatches,
    comic_image,
    constant_gray_batch,
    gray_ramp,
    gray_steps,
)
from noise_research.data.sample_images import SAMPLE_IMAGE_NAMES, sample_images
from noise_research.data.tfds_images import (
    DatasetNotPreparedError,
    TfdsImageBatches,
    gray_random_crop,
    open_array_record_source,
)

__all__ = [
    "DISTORTIONS",
    "SAMPLE_IMAGE_NAMES",
    "BatchSource",
    "ComicBatches",
    "DatasetNotPreparedError",
    "DigitsBatches",
    "Distortion",
    "ProcessSlice",
    "TfdsClassificationBatches",
    "TfdsImageBatches",
    "apply_distortion",
    "comic_image",
    "constant_gray_batch",
    "digits_split",
    "digits_split_indices",
    "gradient_saliency",
    "gray_ramp",
    "gray_random_crop",
    "gray_steps",
    "image_gradient_saliency",
    "open_array_record_source",
    "pad_and_random_crop",
    "random_horizontal_flip",
    "random_resized_crop",
    "resize_and_center_crop",
    "resize_gray",
    "resize_rgb",
    "rgb_to_gray",
    "sample_images",
    "save_distortion_gallery",
    "to_rgb_unit",
    "uint8_scale_to_signed_unit",
]
