"""What ``tools/demo.py`` does: expand inputs, predict, draw, write outputs (atomically).

Inputs are image files, video files, folders (searched recursively for images) and glob patterns
(``**`` allowed). Each image is written under the output folder with its own name (its path
relative to the folder when it came from a folder); each video as ``<name>.mp4`` (mp4v codec, the
input's frame rate and size).
"""

import contextlib
import glob
import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterable, List, Sequence

import numpy as np
from tqdm import tqdm

from eva_det.errors import InputError
from eva_det.utils.atomic import atomic_path
from eva_det.utils.visualize import FrameDrawer, draw_instances_with_labels, filter_instances

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "DemoItem",
    "expand_inputs",
    "run_on_images",
    "run_on_video",
    "run_demo",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


@dataclass(frozen=True)
class DemoItem:
    """One input file and where its drawing goes.

    Attributes:
        path (str): input file.
        output (str): output file.
        is_video (bool): a video (else an image).
    """

    path: str
    output: str
    is_video: bool


def _kind(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    return "image" if ext in IMAGE_EXTENSIONS else "video" if ext in VIDEO_EXTENSIONS else ""


def _item(path: str, relname: str, output_dir: str) -> DemoItem:
    if _kind(path) == "video":
        relname = os.path.splitext(relname)[0] + ".mp4"
        return DemoItem(path, os.path.join(output_dir, relname), True)
    return DemoItem(path, os.path.join(output_dir, relname), False)


def expand_inputs(inputs: Sequence[str], output_dir: str) -> List[DemoItem]:
    """Files to process for ``--input`` paths, folders and globs.

    Args:
        inputs (list[str]): image / video files, folders (recursive, images only), globs.
        output_dir (str): folder the drawings are written to.

    Returns:
        list[DemoItem], in input order (folder and glob matches sorted; a file given twice is
        processed once).

    Raises:
        InputError: an input matches no file, a file is neither an image nor a video, or two
            inputs would write the same output file.
    """
    items: List[DemoItem] = []
    for entry in inputs:
        if os.path.isdir(entry):
            found = sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(entry)
                for name in names
                if _kind(name) == "image"
            )
            if not found:
                raise InputError(
                    f"--input {entry}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder"
                )
            items += [_item(p, os.path.relpath(p, entry), output_dir) for p in found]
            continue
        matches = [entry] if os.path.isfile(entry) else sorted(glob.glob(entry, recursive=True))
        matches = [p for p in matches if os.path.isfile(p)]
        if not matches:
            raise InputError(
                f"--input {entry}: no such file, folder or matching glob (working directory "
                f"{os.getcwd()}). Give existing image / video files, folders or globs."
            )
        for path in matches:
            if not _kind(path):
                raise InputError(
                    f"--input {path}: unknown file type; images: {', '.join(IMAGE_EXTENSIONS)}; "
                    f"videos: {', '.join(VIDEO_EXTENSIONS)}"
                )
            items.append(_item(path, os.path.basename(path), output_dir))
    seen, unique = {}, []
    for item in items:
        other = seen.setdefault(os.path.abspath(item.output), item.path)
        if os.path.abspath(other) != os.path.abspath(item.path):
            raise InputError(
                f"--input {other} and {item.path} would both be written to {item.output}: "
                "pass them in separate runs or rename one"
            )
        if other is item.path:  # first time this output is seen (repeats are dropped)
            unique.append(item)
    return unique


def _write_image(path: str, image_bgr: np.ndarray) -> None:
    import cv2

    with atomic_path(path) as tmp:  # same extension: OpenCV picks the encoder by it
        if not cv2.imwrite(tmp, image_bgr):
            raise OSError(f"could not write {path} (OpenCV has no encoder for its extension)")


def run_on_images(
    predictor: Callable, items: Iterable[DemoItem], threshold: float, metadata=None
) -> int:
    """Predict, draw and write every image item; returns the number of images written.

    Args:
        predictor (callable): (H, W, 3) BGR uint8 -> ``{"instances": Instances}``.
        items (iterable[DemoItem]): image items.
        threshold (float): lowest score drawn.
        metadata (Metadata): class names for the labels (the labels drawn are logged).
    """
    from detectron2.data.detection_utils import read_image

    items = list(items)
    for item in tqdm(items, desc="images", unit="img", disable=not items):
        try:
            image_bgr = read_image(item.path, format="BGR")  # applies EXIF orientation
        except (OSError, ValueError) as e:
            raise InputError(
                f"--input {item.path}: cannot read this image ({type(e).__name__}: {e}). "
                "Check the file (truncated or not an image?) or leave it out."
            ) from None
        instances = filter_instances(predictor(image_bgr)["instances"], threshold)
        drawn, labels = draw_instances_with_labels(image_bgr[:, :, ::-1], instances, metadata)
        _write_image(item.output, np.ascontiguousarray(drawn[:, :, ::-1]))
        logger.info(
            "%s: %d detections (%s) -> %s",
            item.path,
            len(instances),
            ", ".join(labels) or "none",
            item.output,
        )
    return len(items)


def run_on_video(predictor: Callable, item: DemoItem, threshold: float, metadata=None) -> int:
    """Predict and draw every frame of a video into ``item.output``; returns frames written.

    Args:
        predictor (callable): (H, W, 3) BGR uint8 -> ``{"instances": Instances}``.
        item (DemoItem): a video item.
        threshold (float): lowest score drawn.
        metadata (Metadata): class names for the labels.
    """
    import cv2

    capture = cv2.VideoCapture(item.path)
    if not capture.isOpened():
        raise InputError(
            f"--input {item.path}: OpenCV cannot open this video. Check the file, or convert it "
            "to mp4 (H.264) with ffmpeg."
        )
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    draw = FrameDrawer(metadata)
    frames = 0
    with contextlib.ExitStack() as stack:
        stack.callback(capture.release)
        tmp = stack.enter_context(atomic_path(item.output))
        writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        stack.callback(writer.release)
        if not writer.isOpened():
            raise OSError(f"could not open a video writer for {item.output} (mp4v codec)")
        with tqdm(total=total, desc=os.path.basename(item.path), unit="frame") as bar:
            while True:
                ok, frame_bgr = capture.read()
                if not ok:
                    break
                instances = filter_instances(predictor(frame_bgr)["instances"], threshold)
                drawn = draw(np.ascontiguousarray(frame_bgr[:, :, ::-1]), instances)
                writer.write(np.ascontiguousarray(drawn[:, :, ::-1]))
                frames += 1
                bar.update(1)
        writer.release()
        if frames == 0:
            raise InputError(f"--input {item.path}: no frame could be decoded; check the file.")
    logger.info("%s: %d frames -> %s", item.path, frames, item.output)
    return frames


def run_demo(predictor, inputs: Sequence[str], output_dir: str, threshold: float) -> List[str]:
    """Run ``predictor`` (a :class:`LazyPredictor`) on ``inputs``; returns the files written."""
    items = expand_inputs(inputs, output_dir)
    metadata = getattr(predictor, "metadata", None)
    run_on_images(predictor, [i for i in items if not i.is_video], threshold, metadata)
    for item in items:
        if item.is_video:
            run_on_video(predictor, item, threshold, metadata)
    return [item.output for item in items]
