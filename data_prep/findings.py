"""What the builder reports: one :class:`Finding` per problem, with a reason code from :data:`REASONS`."""

from __future__ import annotations

from dataclasses import asdict, dataclass

SKIPPED = "skipped"
FIXED = "fixed"
IGNORED = "ignored"

#: reason code -> one-line explanation (also printed in the README and the console summary).
REASONS: dict[str, str] = {
    # the file is left out of the dataset
    "zero_byte": "empty file (0 bytes)",
    "unreadable": "the file could not be read (permissions or I/O error)",
    "not_an_image": (
        "not an image (Pillow cannot identify it and it has no image extension or signature); the detail names "
        "the detected file type, never the file's bytes"
    ),
    "corrupt": "an image file whose data Pillow cannot decode",
    "truncated": "image data ends early (truncated download or copy)",
    "decompression_bomb": "more pixels than the image pixel limit (default 250 MP; raise it with --max-pixels or IMAGE_MAX_PIXELS)",
    "too_small": "shorter side below --min-side",
    "duplicate": "exact duplicate (same content hash) of a file already kept",
    "leakage": "same content as a test image; the training copy is dropped",
    "unknown_class_id": "a list-file line names a class id that is not in species_list.txt",
    "unknown_domain": "the domain cannot be told (no herbarium/photo/field folder in the path, or a bad CSV value)",
    "missing_file": "a list file or CSV names a file that does not exist",
    "malformed_line": "a list-file line or CSV row that cannot be parsed",
    "unlabelled_test": "a test image with no class in groundtruth.txt",
    "outside_class_folder": "a file directly in a domain folder, not inside a <species> folder",
    "unreadable_folder": "a folder that cannot be listed; its files are missing from the dataset",
    "outside_root": "a symlink (or a list/CSV path) that leads outside the input root: not followed, nothing there is read",
    "broken_link": "a symlink whose target does not exist",
    "same_file": "a symlink to a file or folder that is already read under another path: it is read once, there",
    "not_a_regular_file": "a FIFO, socket or device file: never opened",
    "bad_class_name": "a species folder whose name cannot be a label (starts with '.', contains '\\' or control characters): its files are not read; rename the folder",
    "excluded": "listed in the --exclude file (e.g. the exclude.txt of `data_prep audit`): left out on purpose",
    "not_in_layout": "a file or folder the folders layout does not read: directly in ROOT, or a ROOT folder other than herbarium/, field/ (photo/) and test/",
    # the file is kept after a fix
    "exif_orientation": "EXIF orientation applied to the pixels",
    "converted_mode": "converted to 8-bit RGB (CMYK, 16-bit, palette, grayscale or alpha)",
    "multi_frame": "animated / multi-page file: the first frame is kept",
    # nothing lost, but worth knowing
    "exclude_unmatched": "a path in the --exclude file that names no input image (already gone, or mistyped)",
    "empty_folder": "a species folder with no files",
    "hidden_folder": "a folder whose name starts with '.' inside a domain or species folder: not read",
    "symlink_loop": "a folder symlink that points to a folder containing it: not followed (its files are read once)",
    "class_without_images": "a class whose every file was skipped: it is left out of the label set",
    "class_without_training_images": "a class with images only in test/: nothing to train on, the trainer leaves it (and its test images) out",
}


@dataclass(frozen=True)
class Finding:
    """One reported problem.

    Attributes:
        path: path relative to the input root (or the root itself, ``"."``).
        reason: a key of :data:`REASONS`.
        action: ``"skipped"`` (left out), ``"fixed"`` (kept after a fix) or ``"ignored"`` (nothing to keep).
        detail: free text, e.g. the Pillow error or the other file of a duplicate pair.
    """

    path: str
    reason: str
    action: str
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def __str__(self) -> str:
        tail = f" ({self.detail})" if self.detail else ""
        return f"{self.path}: {self.reason} [{self.action}]{tail}"
