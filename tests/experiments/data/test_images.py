"""Reading one image: only regular files inside the root, every mode to RGB uint8, clear refusals naming the file."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from balanced_l1.experiments.data import images
from balanced_l1.experiments.data.data_errors import ImageReadError
from balanced_l1.experiments.data.images import FileImages, file_name_problem, max_image_bytes, read_image


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rgb = np.random.default_rng(0).integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "a.png")
    return folder


def test_rgb_png_reads_back_exactly(root: Path) -> None:
    pixels = read_image(root, "a.png", (16, 12))
    assert pixels.dtype == np.uint8 and pixels.shape == (12, 16, 3) and pixels.flags.writeable
    assert np.array_equal(pixels, np.asarray(Image.open(root / "a.png")))


def test_sixteen_bit_grayscale_is_scaled_not_clipped(root: Path) -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(root / "deep.png")
    assert Image.open(root / "deep.png").mode.startswith("I")
    pixels = read_image(root, "deep.png", (4, 1))
    assert pixels[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (pixels == pixels[:, :, :1]).all()


def test_32_bit_integer_image_outside_16_bits_is_refused(root: Path) -> None:
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32), mode="I").save(root / "wide.tiff")
    with pytest.raises(ImageReadError, match=r"wide\.tiff: 32-bit integer image with values in \[0, 70000\]"):
        read_image(root, "wide.tiff", (2, 1))


def test_floating_point_image_is_refused(root: Path) -> None:
    Image.fromarray(np.zeros((2, 2), dtype=np.float32), mode="F").save(root / "float.tiff")
    with pytest.raises(ImageReadError, match=r"float\.tiff: floating-point image \(mode 'F'\) is not supported"):
        read_image(root, "float.tiff", (2, 2))


@pytest.mark.parametrize("mode", ["L", "P", "LA", "RGBA", "1"])
def test_other_modes_become_rgb(root: Path, mode: str) -> None:
    Image.open(root / "a.png").convert(mode).save(root / "m.png")
    pixels = read_image(root, "m.png", (16, 12))
    assert pixels.shape == (12, 16, 3)
    assert np.array_equal(pixels, np.asarray(Image.open(root / "m.png").convert("RGB")))


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("/etc/passwd", "is an absolute path"),
        ("../../../../../../etc/passwd", "has a '..' component"),
        ("x/../../a.png", "has a '..' component"),
        ("..\\secret.png", "has a '..' component"),
        ("D:\\data\\a.png", "is an absolute path"),
        ("", "is empty"),
    ],
)
def test_paths_leaving_the_root_are_refused_before_anything_is_opened(root: Path, name: str, problem: str) -> None:
    assert file_name_problem(name).startswith(problem)
    with pytest.raises(ImageReadError, match=rf"image file_name .* {problem}"):
        read_image(root, name, (16, 12))


def test_symlinked_image_is_refused_unless_allowed(root: Path, tmp_path: Path) -> None:
    Image.open(root / "a.png").save(tmp_path / "outside.png")
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    with pytest.raises(ImageReadError, match=r"link\.png: the image is a symbolic link; .*--follow-symlinks"):
        read_image(root, "link.png", (16, 12))
    assert read_image(root, "link.png", (16, 12), follow_symlinks=True).shape == (12, 16, 3)


def test_symlinked_folder_is_refused_unless_allowed(root: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    Image.open(root / "a.png").save(tmp_path / "elsewhere" / "b.png")
    (root / "sub").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ImageReadError, match=r"sub/b\.png: folder .*sub is a symbolic link"):
        read_image(root, "sub/b.png", (16, 12))
    assert read_image(root, "sub/b.png", (16, 12), follow_symlinks=True).shape == (12, 16, 3)


def test_image_in_a_subfolder_is_read(root: Path) -> None:
    (root / "sub").mkdir()
    Image.open(root / "a.png").save(root / "sub" / "c.png")
    assert read_image(root, "sub/c.png", (16, 12)).shape == (12, 16, 3)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_refused_without_hanging(root: Path) -> None:
    os.mkfifo(root / "pipe.png")
    outcome: list[BaseException] = []

    def attempt() -> None:
        try:
            read_image(root, "pipe.png", (16, 12), follow_symlinks=True)
        except ImageReadError as err:
            outcome.append(err)

    reader = threading.Thread(target=attempt, daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "reading a FIFO hung"
    assert "pipe.png: the image is a FIFO, not a regular file" in str(outcome[0])


def test_folder_named_as_an_image_is_refused(root: Path) -> None:
    (root / "dir.png").mkdir()
    with pytest.raises(ImageReadError, match=r"dir\.png: the image is a folder, not a regular file"):
        read_image(root, "dir.png", (16, 12))


def test_missing_image_is_named(root: Path) -> None:
    with pytest.raises(ImageReadError, match=r"gone\.png: image file not found"):
        read_image(root, "gone.png", (16, 12))


def test_missing_subfolder_is_named(root: Path) -> None:
    with pytest.raises(ImageReadError, match=r"nope/x\.png: image file not found \(no folder"):
        read_image(root, "nope/x.png", (16, 12))


def test_undecodable_file_is_named(root: Path) -> None:
    (root / "junk.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ImageReadError, match=r"junk\.jpg: cannot decode the image"):
        read_image(root, "junk.jpg", (16, 12))


def test_size_other_than_declared_is_named(root: Path) -> None:
    with pytest.raises(ImageReadError, match=r"a\.png: image is 16x12 but its annotation file declares 12x16"):
        read_image(root, "a.png", (12, 16))


@pytest.mark.parametrize("limit", [100, 150])  # over twice the limit Pillow raises, over the limit it warns
def test_decompression_bomb_is_refused(root: Path, monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(ImageReadError, match=rf"a\.png: refused as a possible decompression bomb, .* {limit} pixels"):
        read_image(root, "a.png", (16, 12))


def test_an_image_file_larger_than_its_declared_size_allows_is_refused_before_it_is_read(root: Path) -> None:
    with (root / "a.png").open("r+b") as handle:  # sparse: a PNG followed by a GiB of nothing
        handle.truncate(1 << 30)
    with pytest.raises(
        ImageReadError,
        match=r"a\.png: the image file is 1 GiB .* over the limit of 16.0 MiB .* refused without reading it",
    ):
        read_image(root, "a.png", (16, 12))
    assert max_image_bytes((16, 12)) == 16 * 12 * 8 + (16 << 20)


def test_the_pixel_bound_holds_when_pillows_check_is_turned_off(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageReadError, match=r"a\.png: image is 16x12, over the limit of 100 pixels"):
        read_image(root, "a.png", (16, 12))


def test_file_images_read_lazily_by_index(root: Path) -> None:
    source = FileImages(str(root), ("a.png", "missing.png"), np.array([[16, 12], [16, 12]]))
    assert len(source) == 2 and source.load(0).shape == (12, 16, 3)
    with pytest.raises(ImageReadError, match=r"missing\.png: image file not found"):
        source.load(1)
