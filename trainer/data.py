"""The TensorFlow input pipeline: a :class:`~trainer.dataset.Split`'s images as ``tf.data`` batches.

Preprocessing in TensorFlow is TF-Slim's Inception evaluation path, i.e. exactly
``shared.preprocessing``: decode (JPEG with the accurate IDCT, bit-identical to OpenCV) ->
float [0, 1] -> ``tf.image.central_crop(0.875)`` ->
``tf.image.resize(bilinear, antialias=False)`` (half-pixel centres, as ``cv2.INTER_LINEAR``) ->
``(x - 0.5) * 2``. TensorFlow crops and resizes *floats* here; the agent crops and resizes *uint8*
with OpenCV and the IR scales afterwards, so the two differ only by the uint8 rounding of the
resized pixels (at most 1/255 per pixel before scaling; a test holds this).

Images come from the split's TFRecords when it was imported (``leukonet trainer import``), else
from its files. TensorFlow is imported inside the functions, so importing this module is cheap;
the data-set logic (scan, split, fingerprint) is :mod:`trainer.dataset`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shared.preprocessing import CENTRAL_FRACTION
from trainer.dataset import SPLIT_PARTS, DatasetError, Sample, Split


def decode_tf(image_bytes: Any) -> Any:
    """Decode JPEG/PNG/BMP bytes to uint8 RGB ``[H, W, 3]`` (TF graph op), as OpenCV decodes them.

    JPEGs use ``dct_method="INTEGER_ACCURATE"``: TensorFlow's default IDCT differs from OpenCV's
    libjpeg-turbo by up to 13 grey levels on a pixel, the accurate one matches it exactly, so the
    network trains on the pixels the agents will see.
    """
    import tensorflow as tf

    image = tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False),
    )
    image.set_shape([None, None, 3])
    return image


def preprocess_for_eval(image: Any, image_size: int, central_fraction: float = CENTRAL_FRACTION) -> Any:
    """uint8 RGB ``[H, W, 3]`` -> float32 ``[S, S, 3]`` in [-1, 1]: Inception's eval preprocessing."""
    import tensorflow as tf

    x = tf.image.convert_image_dtype(image, tf.float32)  # uint8 -> [0, 1]
    x = tf.image.central_crop(x, central_fraction)
    x = tf.image.resize(x, [image_size, image_size], method="bilinear", antialias=False)
    x = tf.clip_by_value(x, 0.0, 1.0)
    return (x - 0.5) * 2.0


def augment_batch(x: Any, seed: int) -> Any:
    """Training augmentation of a batch ``[B, S, S, 3]`` in [-1, 1], drawn per image.

    A smear has no up, down or handedness: a random transpose and random left-right and up-down
    flips pick one of the 8 symmetries of the square (all quarter turns and mirror images) with
    equal chance, and keep the label. Light colour jitter mimics stain and lamp variation:
    brightness +-0.06 (of the [0, 1] range) and saturation x0.85-1.15 (blend with the grey image).
    Vectorised over the batch: per-image ``map`` calls cost a fifth of the training speed on two
    cores (``make bench``, trainer_input_pipeline_ratio).
    """
    import tensorflow as tf

    n = tf.shape(x)[0]

    def coin(k: int) -> Any:
        return tf.reshape(tf.random.uniform([n], seed=seed + k) < 0.5, [-1, 1, 1, 1])

    x = tf.where(coin(0), tf.transpose(x, [0, 2, 1, 3]), x)
    x = tf.where(coin(1), tf.reverse(x, [2]), x)
    x = tf.where(coin(2), tf.reverse(x, [1]), x)
    brightness = tf.random.uniform([n, 1, 1, 1], -0.06, 0.06, seed=seed + 3) * 2.0  # [0, 1] units -> [-1, 1]
    saturation = tf.random.uniform([n, 1, 1, 1], 0.85, 1.15, seed=seed + 4)
    grey = tf.reduce_sum(x * tf.constant([0.2989, 0.587, 0.114]), axis=-1, keepdims=True)
    x = grey + (x - grey) * saturation + brightness
    return tf.clip_by_value(x, -1.0, 1.0)


# Decoded, cropped and resized training images are kept in memory when they fit in this budget:
# decoding dominated the step time on two cores. Augmentation still runs per epoch after the cache.
# Above it, the shuffle buffer is capped to the same budget.
CACHE_BUDGET_BYTES = 1 << 30


def _finish(ds: Any, count: int, image_size: int, batch_size: int, training: bool, seed: int) -> Any:
    """``(image [S, S, 3] in [-1, 1], label)`` elements -> batches; see :func:`make_dataset`."""
    import tensorflow as tf

    if training:
        image_bytes = image_size * image_size * 3 * 4
        if count * image_bytes <= CACHE_BUDGET_BYTES:
            ds = ds.cache()
        buffer = max(1, min(count, CACHE_BUDGET_BYTES // image_bytes))
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat()
        ds = ds.batch(batch_size, drop_remainder=True)
        ds = ds.map(lambda x, label: (augment_batch(x, seed), label), num_parallel_calls=1)
        return ds.prefetch(tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(2)


def make_dataset(
    samples: list[Sample], image_size: int, batch_size: int, *, training: bool, seed: int = 0
) -> Any:
    """A ``tf.data.Dataset`` of ``(images [B, S, S, 3] float32 in [-1, 1], labels [B] int32)`` from files.

    Training: decoded + cropped + resized once (cached in memory within
    :data:`CACHE_BUDGET_BYTES`), then shuffled each epoch (seeded), augmented, repeated forever,
    full batches only. Evaluation: file order, one pass, the last batch may be short.

    Raises:
        DatasetError: ``samples`` is empty.
    """
    import tensorflow as tf

    if not samples:
        raise DatasetError("no samples to feed; the split is empty (add images or lower the split fractions)")
    paths = [s.path for s in samples]
    labels = [s.label_index for s in samples]
    ds = tf.data.Dataset.from_tensor_slices((paths, tf.constant(labels, tf.int32)))

    def load(path: Any, label: Any) -> tuple[Any, Any]:
        return preprocess_for_eval(decode_tf(tf.io.read_file(path)), image_size), label

    ds = ds.map(load, num_parallel_calls=2, deterministic=True)
    return _finish(ds, len(samples), image_size, batch_size, training, seed)


def parse_example(serialized: Any) -> tuple[Any, Any]:
    """One serialized ``tf.train.Example`` -> ``(uint8 RGB image [H, W, 3], label int32)`` (graph ops)."""
    import tensorflow as tf

    features = tf.io.parse_single_example(
        serialized,
        {
            "image/encoded": tf.io.FixedLenFeature([], tf.string),
            "image/class/label": tf.io.FixedLenFeature([], tf.int64),
        },
    )
    return decode_tf(features["image/encoded"]), tf.cast(features["image/class/label"], tf.int32)


def tfrecord_dataset(
    files: list[str] | list[Path],
    image_size: int,
    batch_size: int,
    *,
    training: bool,
    seed: int = 0,
    count: int | None = None,
    central_fraction: float = CENTRAL_FRACTION,
) -> Any:
    """Same batches as :func:`make_dataset`, read from TFRecord shards written by the importer.

    Training decodes each record once (cached within :data:`CACHE_BUDGET_BYTES`), shuffles
    (seeded), augments and repeats; evaluation reads the shards once, one after the other, so
    the order is the split's sample order. ``count`` (records in the shards) sizes the cache
    and the shuffle buffer; unknown, the buffer is 1024.

    Raises:
        DatasetError: no shard files, or a shard is missing.
    """
    import tensorflow as tf

    if not files:
        raise DatasetError("no TFRecord shards to read; run `leukonet trainer import` first")
    missing = [str(f) for f in files if not Path(f).is_file()]
    if missing:
        raise DatasetError(
            f"TFRecord shard(s) missing: {missing[:3]}; re-run `leukonet trainer import` "
            "or train from the image folder"
        )
    names = [str(f) for f in files]
    ds = tf.data.TFRecordDataset(names, num_parallel_reads=min(len(names), 2) if training else None)

    def load(serialized: Any) -> tuple[Any, Any]:
        image, label = parse_example(serialized)
        return preprocess_for_eval(image, image_size, central_fraction), label

    ds = ds.map(load, num_parallel_calls=2, deterministic=True)
    return _finish(ds, count if count is not None else 1024, image_size, batch_size, training, seed)


def split_input(
    split: Split, part: str, image_size: int, batch_size: int, *, training: bool, seed: int = 0
) -> Any:
    """The batches of one split part, from its TFRecords when the split was imported, else its files."""
    samples = split.part(part)
    if not samples:
        raise DatasetError(f"the {part} split is empty; add images or change the split fractions")
    if split.records:
        return tfrecord_dataset(
            split.records.get(part, []),
            image_size,
            batch_size,
            training=training,
            seed=seed,
            count=len(samples),
        )
    return make_dataset(samples, image_size, batch_size, training=training, seed=seed)


def iter_records(files: list[str]) -> Iterator[tuple[str, bytes, str]]:
    """``(content sha256, encoded image bytes, format)`` of every record in ``files``, in order."""
    import tensorflow as tf

    for name in files:
        for raw in tf.compat.v1.io.tf_record_iterator(name):
            feature = tf.train.Example.FromString(raw).features.feature
            yield (
                feature["image/sha256"].bytes_list.value[0].decode(),
                feature["image/encoded"].bytes_list.value[0],
                feature["image/format"].bytes_list.value[0].decode(),
            )


def encoded_images(split: Split, samples: list[Sample]) -> Iterator[tuple[Sample, bytes, str]]:
    """``(sample, encoded bytes, file suffix)`` of ``samples`` from the split's source (records or
    files), in source order; the suffix is the record's format (``.png`` for an imported TIFF).

    Raises:
        DatasetError: a sample is in neither (its shard or file went missing).
    """
    wanted = {s.sha256: s for s in samples}
    if not split.records:
        for s in samples:
            try:
                yield s, Path(s.path).read_bytes(), Path(s.path).suffix
            except OSError as exc:
                raise DatasetError(
                    f"{s.path}: cannot read it ({exc.strerror}); the data set changed "
                    "since the split was made"
                ) from exc
        return
    files = [f for part in SPLIT_PARTS for f in split.records.get(part, [])]
    found = 0
    for sha, data, fmt in iter_records(files):
        if sha in wanted:
            found += 1
            yield wanted[sha], data, f".{fmt}"
    if found < len(wanted):
        raise DatasetError(
            f"{len(wanted) - found} image(s) of the split are missing from its TFRecords "
            f"{files[:2]}...; re-run `leukonet trainer import`"
        )


def write_images(split: Split, samples: list[Sample], folder: Path) -> list[str]:
    """Copy ``samples``' encoded bytes to ``folder/<sha256>.<ext>`` (ordered as ``samples``); their paths.

    For a split read from TFRecords this is how OpenCV-side code (the parity check) gets files.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    for sample, data, suffix in encoded_images(split, samples):
        path = folder / f"{sample.sha256}{suffix}"
        path.write_bytes(data)
        paths[sample.sha256] = str(path)
    return [paths[s.sha256] for s in samples]
