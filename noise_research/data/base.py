"""The batch-source contract and the per-process slice of a global batch.

A batch source is random-access by training step: `batch(step)` depends only on (seed, step,
process_index), so a run resumed at step s sees exactly the batches an uninterrupted run would
have seen, with no iterator state to checkpoint (DESIGN.md, "Orbax ... resume continues exactly
where it stopped").

The global example stream is split between processes by position: at step s with global batch G
and P processes, process p gets the examples at global positions
`s·G + p·G/P … s·G + (p+1)·G/P − 1`, so the union over processes is the same global batch for
every P.

The module also holds the image conversions every data source shares (the project's gray
convention: float32 in [−1, 1], one channel, gray = 0.299R + 0.587G + 0.114B, DESIGN.md "NIB /
halftoning").
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import os
from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

import jax
import numpy as np
from PIL import Image

# ITU-R BT.601 luma weights, as in the ReversibleHalftoning code (DESIGN.md "NIB / halftoning").
RGB_TO_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# Largest seed accepted everywhere (numpy and grain both take 32-bit unsigned seeds).
MAX_SEED = 2**32 - 1

ENDLESS = 2**62
"""The step range of a training source's `iterate`: in practice without end."""

WORKER_PREFETCH_BATCHES = 2
"""Batches each worker process of `worker_batches` builds ahead."""

Batch = dict[str, np.ndarray]


@runtime_checkable
class BatchSource(Protocol):
    """Random-access source of training batches, keyed by training step."""

    global_batch_size: int

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's share of the global batch for `step`.

        The first axis of every array is `global_batch_size // process_count`; the result is
        deterministic in (seed, step, process_index).
        """
        ...


def check_integer(
    value: int, argument_name: str, minimum: int = 0, maximum: int | None = None
) -> int:
    """Returns `value` as an int after checking it is an integer in [minimum, maximum]."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        allowed = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{argument_name} must be an integer {allowed}, got {value!r}.")
    return int(value)


def check_seed(seed: int, argument_name: str = "seed") -> int:
    """Returns `seed` as an int after checking it lies in [0, 2**32 − 1]."""
    return check_integer(seed, argument_name, 0, MAX_SEED)


def check_image_size(size: tuple[int, int], argument_name: str = "size") -> tuple[int, int]:
    """Returns `size` as a `(height, width)` tuple of positive ints, or raises ValueError."""
    if (
        not isinstance(size, tuple | list)
        or len(size) != 2
        or not all(isinstance(side, int | np.integer) and side > 0 for side in size)
    ):
        raise ValueError(
            f"{argument_name} must be a (height, width) pair of positive integers, got {size!r}."
        )
    return int(size[0]), int(size[1])


@dataclasses.dataclass(frozen=True)
class ProcessSlice:
    """This process's contiguous share of each global batch (see the module docstring).

    Attributes:
      global_batch_size: examples per step summed over all processes.
      process_index: this process, in [0, process_count); defaults to `jax.process_index()`.
      process_count: number of processes; defaults to `jax.process_count()`.
    """

    global_batch_size: int
    process_index: int | None = None
    process_count: int | None = None

    def __post_init__(self) -> None:
        global_batch_size = check_integer(self.global_batch_size, "global_batch_size", 1)
        process_count = check_integer(
            jax.process_count() if self.process_count is None else self.process_count,
            "process_count",
            1,
        )
        process_index = check_integer(
            jax.process_index() if self.process_index is None else self.process_index,
            "process_index",
            0,
            process_count - 1,
        )
        if global_batch_size % process_count:
            raise ValueError(
                f"global_batch_size={global_batch_size} does not divide by "
                f"process_count={process_count}; use a multiple of {process_count}."
            )
        object.__setattr__(self, "global_batch_size", global_batch_size)
        object.__setattr__(self, "process_index", process_index)
        object.__setattr__(self, "process_count", process_count)

    @property
    def per_process_batch_size(self) -> int:
        """Examples this process gets per step: global_batch_size // process_count."""
        return self.global_batch_size // self.process_count

    def global_positions(self, step: int) -> range:
        """Positions in the global example stream of this process's examples at `step`."""
        first = (
            check_integer(step, "step") * self.global_batch_size
            + self.process_index * self.per_process_batch_size
        )
        return range(first, first + self.per_process_batch_size)


class PositionalImageBatches:
    """Batch source of procedural images, each a pure function of (seed, its global position).

    Follows the `BatchSource` contract: ``batch(step)`` is this process's slice of the global batch
    for ``step``, ``{"image": (global_batch_size // process_count, H, W, C)}`` and ``"position"``
    (b,) int32, the rows' global positions; the same global batch for any number of processes.
    Subclasses define ``image(position) -> (H, W, C)`` from ``self.seed`` and ``self.size``.
    """

    def __init__(
        self,
        global_batch_size: int,
        size: tuple[int, int],
        seed: int = 0,
        process_index: int | None = None,
        process_count: int | None = None,
    ) -> None:
        self.process_slice = ProcessSlice(global_batch_size, process_index, process_count)
        self.global_batch_size = self.process_slice.global_batch_size
        self.size = check_image_size(size)
        self.seed = check_seed(seed)

    def image(self, position: int) -> np.ndarray:
        raise NotImplementedError

    def batch(self, step: int) -> dict[str, np.ndarray]:
        positions = self.process_slice.global_positions(step)
        images = [self.image(position) for position in positions]
        return {"image": np.stack(images), "position": np.asarray(positions, np.int32)}


def rgb_to_gray(image: np.ndarray) -> np.ndarray:
    """Gray (H, W, 1) float32 from an (H, W, 3) RGB or (H, W[, 1]) gray image, same value scale.

    Gray = 0.299R + 0.587G + 0.114B (DESIGN.md, "NIB / halftoning").
    """
    image = np.asarray(image)
    if image.ndim == 2:
        return image.astype(np.float32)[..., None]
    if image.ndim == 3 and image.shape[-1] == 1:
        return image.astype(np.float32)
    if image.ndim == 3 and image.shape[-1] == 3:
        return (image.astype(np.float32) @ RGB_TO_GRAY_WEIGHTS)[..., None]
    raise ValueError(
        f"image must have shape (H, W), (H, W, 1) or (H, W, 3), got shape {image.shape}."
    )


def uint8_scale_to_signed_unit(image: np.ndarray) -> np.ndarray:
    """Maps values on the 0…255 scale to float32 in [−1, 1] (0 → −1, 255 → +1), clipping."""
    return np.clip(np.asarray(image, dtype=np.float32) / 127.5 - 1.0, -1.0, 1.0)


def resize_gray(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resizes a gray (H, W, 1) image to `size` = (height, width) with Pillow's Lanczos filter.

    Works on float32 (Pillow mode "F"), so values keep their scale; Lanczos can overshoot a little
    at edges, so callers clip after mapping to their range.
    """
    if image.ndim != 3 or image.shape[-1] != 1:
        raise ValueError(f"image must have shape (H, W, 1), got shape {image.shape}.")
    height, width = check_image_size(size)
    resized = Image.fromarray(np.asarray(image[..., 0], dtype=np.float32)).resize(
        (width, height), Image.Resampling.LANCZOS
    )
    return np.asarray(resized, dtype=np.float32)[..., None]


def default_num_workers(num_workers: int | None) -> int:
    """`num_workers` checked (>= 0), or one per CPU core of this host when None."""
    return check_integer(os.cpu_count() or 1 if num_workers is None else num_workers, "num_workers")


class _BackgroundBatches:
    """`batch(step)` for the steps of a range, built one step ahead on a background thread."""

    def __init__(self, batch: Callable[[int], Batch], steps: range) -> None:
        self._make_batch = batch
        self._steps = iter(steps)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._ahead = [self._pool.submit(batch, step) for step in itertools.islice(self._steps, 2)]

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if not self._ahead:
            raise StopIteration
        future = self._ahead.pop(0)
        step = next(self._steps, None)
        if step is not None:
            self._ahead.append(self._pool.submit(self._make_batch, step))
        return future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def worker_batches(
    batch: Callable[[int], Batch], steps: range, num_workers: int
) -> Iterator[Batch]:
    """`batch(step)` for each step of `steps`, in order, built in `num_workers` processes.

    grain's `mp_prefetch`: worker w builds whole batches for steps w, w + n, w + 2n, ... (n =
    `num_workers`) on one core each and hands them over in shared memory; they come out in step
    order, bit-identical to calling `batch` here, so resume stays exact. Processes rather than
    threads: decoding and augmenting an image holds the GIL for part of its time, which caps one
    process at a few thousand images/s however many cores it has. `batch` is a bound method of
    a picklable source (cloudpickle), loaded once per worker. With `num_workers = 0` the batches
    are built two steps ahead on one background thread of this process (grain is then not
    needed). Close the iterator (or drop it) to stop the workers.
    """
    if num_workers == 0:
        return _BackgroundBatches(batch, steps)
    import grain
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain reads its absl flags; programs without absl
        flags.FLAGS.mark_as_parsed()
    batches = grain.MapDataset.range(steps.start, steps.stop).map(batch)
    one_at_a_time = grain.ReadOptions(num_threads=1, prefetch_buffer_size=WORKER_PREFETCH_BATCHES)
    options = grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=WORKER_PREFETCH_BATCHES
    )
    return iter(batches.to_iter_dataset(one_at_a_time).mp_prefetch(options))
