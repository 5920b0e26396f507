"""Image inputs for model extraction: folders, CSV lists, the evaluation transform.

Sample order is deterministic (sorted class folders, sorted files within each),
which is what lets an interrupted extraction resume by skipping the rows already
written. The transform reproduces the standard self-supervised evaluation protocol
with PIL and numpy only (no torchvision): resize the shorter side, centre-crop,
scale to [0, 1], normalise per channel.

PIL is imported inside the functions, so listing and validation work without the
``torch`` extra installed.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnkcli.errors import InputError
from nnkcli.storage.labels import map_labels

#: File types the folder reader picks up (compared case-insensitively); as
#: torchvision's ImageFolder, so ids match extractions made with it.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

INTERPOLATIONS = ("bicubic", "bilinear")

#: ImageNet statistics, the normalisation every standard SSL evaluation uses.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageSamples:
    """The images to extract, in extraction order.

    Attributes
    ----------
    paths : list of Path
        Files to read, length n.
    labels : list of int
        Class ids into ``class_names`` (``-1``: unlabelled), length n.
    ids : list of str
        Sample ids stored with the features: the path relative to the image root
        (folder) or as written in the list (CSV).
    class_names : list of str
    root : str
        The folder or list file the samples come from (absolute).
    """

    paths: list[Path]
    labels: list[int]
    ids: list[str]
    class_names: list[str]
    root: str

    def __len__(self) -> int:
        return len(self.paths)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def scan_image_folder(root: str | os.PathLike) -> ImageSamples:
    """Samples of an image-folder layout: ``root/<class>/**/<image>``.

    Class ids are the positions of the sorted sub-folder names; files are taken
    recursively, sorted, hidden ones and other extensions ignored.

    Raises
    ------
    InputError
        ``root`` missing, with no class folders, or a class folder without images.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"--images: no such folder {root}", hint="give a folder with one sub-folder per class")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise InputError(
            f"--images {root} has no class sub-folders",
            hint="lay images out as DIR/<class name>/<image>, or list them with --image-list",
        )
    paths: list[Path] = []
    labels: list[int] = []
    ids: list[str] = []
    for class_id, name in enumerate(classes):
        found: list[Path] = []
        # sorted by folder path then file name: the order of torchvision's ImageFolder
        for dirpath, _, filenames in sorted(os.walk(root / name, followlinks=True)):
            if any(part.startswith(".") for part in Path(dirpath).relative_to(root).parts):
                continue
            found.extend(Path(dirpath) / f for f in sorted(filenames) if _is_image(f))
        if not found:
            raise InputError(
                f"--images: class folder {name!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})",
                hint="remove the empty folder: class ids follow the sorted folder names",
            )
        paths.extend(found)
        labels.extend([class_id] * len(found))
        ids.extend(p.relative_to(root).as_posix() for p in found)
    return ImageSamples(paths, labels, ids, classes, str(root.resolve()))


def read_image_list(list_file: str | os.PathLike) -> ImageSamples:
    """Samples of a CSV list of ``path,label`` rows.

    Relative paths are relative to the list's folder. A first row ``path,label``
    is taken as a header. Labels are class names or integers, mapped to ids in
    the sorted order of the distinct labels (numeric order for numbers); a row
    without a label is unlabelled (``-1``). The store reconciles the names with
    the classes it already holds.

    Raises
    ------
    InputError
        Missing/unreadable list, a row without a path, a listed file that does not
        exist, an empty list.
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise InputError(f"--image-list: no such file {list_file}", hint="give a CSV file of path,label rows")
    try:
        with open(list_file, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"--image-list: cannot read {list_file} ({exc})", hint="give a UTF-8 CSV file") from None
    if rows and [c.strip().lower() for c in rows[0][:2]] in (["path", "label"], ["path"]):
        rows = rows[1:]
    if not rows:
        raise InputError(f"--image-list {list_file} lists no images", hint="one path,label row per image")
    base = list_file.parent
    paths, raw_labels, ids = [], [], []
    for line, row in enumerate(rows, start=1):
        path = row[0].strip()
        if not path:
            raise InputError(f"--image-list {list_file}: row {line} has no path", hint="rows are path,label")
        ids.append(path)
        paths.append(Path(path) if os.path.isabs(path) else base / path)
        raw_labels.append(row[1].strip() if len(row) > 1 else "")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(
            f"--image-list: {len(missing)} listed {'file does' if len(missing) == 1 else 'files do'} "
            f"not exist, first {missing[0]}",
            hint="paths are relative to the list file's folder",
        )
    mapping = map_labels(np.array(raw_labels, dtype=object))
    labels = mapping.ids.tolist()
    class_names = mapping.classes
    return ImageSamples(paths, labels, ids, list(class_names), str(list_file.resolve()))


@dataclass(frozen=True)
class EvalTransform:
    """The evaluation transform: PIL image -> normalised (3, crop, crop) float32 array.

    Resize so that the shorter side is ``resize`` pixels (the longer side scaled by
    the same factor and truncated, as torchvision does), crop the centre
    ``crop`` x ``crop`` square, scale to [0, 1], subtract ``mean`` and divide by
    ``std`` per channel. With PIL's resampling filters this equals torchvision's
    ``Resize(resize, interpolation) -> CenterCrop(crop) -> ToTensor -> Normalize``
    on PIL images.

    Parameters
    ----------
    resize : int, default=256
    crop : int, default=224
        At most ``resize``.
    interpolation : {"bicubic", "bilinear"}, default="bicubic"
        Bicubic is what DINO's k-NN and linear evaluations use; bilinear is
        torchvision's classic ImageNet evaluation (MoCo, SimCLR ports).
    mean, std : tuple of 3 floats
    """

    resize: int = 256
    crop: int = 224
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        if not isinstance(self.resize, int) or self.resize < 1:
            raise InputError(f"--resize must be a positive integer, got {self.resize!r}", hint="e.g. --resize 256")
        if not isinstance(self.crop, int) or self.crop < 1:
            raise InputError(f"--crop must be a positive integer, got {self.crop!r}", hint="e.g. --crop 224")
        if self.crop > self.resize:
            raise InputError(
                f"--crop {self.crop} is larger than --resize {self.resize}",
                hint="the centre crop is taken from the resized image; use --crop <= --resize",
            )
        if self.interpolation not in INTERPOLATIONS:
            raise InputError(
                f"--interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}",
                hint="bicubic matches DINO's evaluation",
            )
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != 3:
                raise InputError(
                    f"--{name} needs 3 values (R,G,B), got {len(values)}", hint=f"e.g. --{name} 0.5,0.5,0.5"
                )
        if any(not s > 0 for s in self.std):
            raise InputError(
                f"--std values must be positive, got {','.join(map(str, self.std))}",
                hint="e.g. --std 0.229,0.224,0.225",
            )

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after resizing the shorter side to ``resize``."""
        if width <= height:
            return self.resize, int(self.resize * height / width)
        return int(self.resize * width / height), self.resize

    def __call__(self, image):
        """Transform one PIL image.

        Returns
        -------
        ndarray of shape (3, crop, crop), dtype float32
        """
        from PIL import Image

        resample = Image.Resampling.BICUBIC if self.interpolation == "bicubic" else Image.Resampling.BILINEAR
        image = image.convert("RGB")
        size = self.resized_size(*image.size)
        if size != image.size:
            image = image.resize(size, resample=resample)
        width, height = image.size
        top = int(round((height - self.crop) / 2.0))
        left = int(round((width - self.crop) / 2.0))
        image = image.crop((left, top, left + self.crop, top + self.crop))
        x = np.asarray(image, dtype=np.float32) / np.float32(255.0)  # (crop, crop, 3)
        x = (x - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def describe(self) -> str:
        """One line for provenance attrs and logs."""
        return (
            f"resize shorter side {self.resize} ({self.interpolation}), centre-crop {self.crop}, "
            f"[0,1], normalise mean={','.join(f'{v:g}' for v in self.mean)} std={','.join(f'{v:g}' for v in self.std)}"
        )


def load_image(path: str | os.PathLike):
    """Open and fully decode an image (lazy PIL decoding would defer the error)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


class ImageDataset:
    """Map-style dataset over ``ImageSamples[start:]`` for ``torch.utils.data.DataLoader``.

    Items are ``(image, label, position, error)``: ``image`` the transformed
    (3, crop, crop) float32 array, ``position`` the index into the samples, and
    ``error`` ``""`` or why the file could not be decoded (the image is then zeros).
    Errors are returned rather than raised so that the main process can name the
    file, whichever worker process read it.
    """

    def __init__(self, samples: ImageSamples, transform: EvalTransform, start: int = 0):
        self.samples = samples
        self.transform = transform
        self.start = start

    def __len__(self) -> int:
        return len(self.samples) - self.start

    def __getitem__(self, i: int):
        position = self.start + i
        label = self.samples.labels[position]
        try:
            image = self.transform(load_image(self.samples.paths[position]))
            error = ""
        except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError ...
            from nnkcli.errors import interrupt_in

            stop = interrupt_in(exc)
            if stop is not None:  # an interrupt is never "a bad image"
                raise stop from exc
            crop = self.transform.crop
            image = np.zeros((3, crop, crop), dtype=np.float32)
            error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return image, label, position, error
