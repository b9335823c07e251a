"""Decoding: every PIL mode to 8-bit RGB, EXIF orientation, reduced JPEG decoding."""

import numpy as np
import pytest
import torch
from datafiles import random_pixels
from PIL import Image

from frcnn.data import DetectionDataset, ImageRecord, image_to_tensor, inspect_image, read_image
from frcnn.data.transforms import Augmentation


def test_gray_palette_alpha_modes_become_rgb(tmp_path):
    gray = np.array([[0, 10], [128, 255]], dtype=np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "l.png")
    Image.fromarray(np.stack([gray, gray[::-1]], axis=2), "LA").save(tmp_path / "la.png")
    rgba = np.array([[[1, 2, 3, 0], [40, 50, 60, 255]]], dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    palette = Image.new("P", (2, 1))
    palette.putpalette([200, 10, 20, 5, 250, 30] + [0] * 762)
    palette.putdata([1, 0])
    palette.save(tmp_path / "p.png")

    expected_gray = np.repeat(gray[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(read_image(tmp_path / "l.png")[0], expected_gray)
    np.testing.assert_array_equal(read_image(tmp_path / "la.png")[0], expected_gray)  # alpha dropped
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png")[0], rgba[:, :, :3])
    np.testing.assert_array_equal(read_image(tmp_path / "p.png")[0], np.array([[[5, 250, 30], [200, 10, 20]]]))


def test_sixteen_bit_and_cmyk_become_8_bit_rgb(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "i16.png")  # opens as "I;16"
    Image.fromarray(values.astype(np.int32)).save(tmp_path / "i32.tif")  # opens as "I"
    assert Image.open(tmp_path / "i16.png").mode == "I;16"
    assert Image.open(tmp_path / "i32.tif").mode == "I"
    expected = np.repeat(np.array([[0, 100, 255]], dtype=np.uint8)[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(read_image(tmp_path / "i16.png")[0], expected)  # not clipped at 255
    np.testing.assert_array_equal(read_image(tmp_path / "i32.tif")[0], expected)

    cmyk = Image.new("CMYK", (3, 1))
    cmyk.putdata([(0, 255, 255, 0), (0, 0, 0, 0), (0, 0, 0, 255)])  # red, white, black
    cmyk.save(tmp_path / "cmyk.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "cmyk.tif")[0],
                                  np.array([[[255, 0, 0], [255, 255, 255], [0, 0, 0]]], dtype=np.uint8))


def test_exif_orientation_is_applied(tmp_path):
    stored = random_pixels(48, 32, seed=3)  # (32, 48, 3): stored landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed = stored rotated 90 degrees clockwise
    Image.fromarray(stored).save(tmp_path / "rotated.jpg", quality=98, exif=exif)

    image, reduction = read_image(tmp_path / "rotated.jpg")
    assert image.shape == (48, 32, 3) and reduction == 1
    clockwise = np.rot90(stored, k=-1)
    assert np.abs(image.astype(int) - clockwise.astype(int)).mean() < 3  # JPEG round-off only
    assert np.abs(image.astype(int) - np.rot90(stored, k=1).astype(int)).mean() > 20  # not the other way
    info = inspect_image(tmp_path / "rotated.jpg", full=False)
    assert (info.width, info.height, info.stored_width, info.stored_height) == (32, 48, 48, 32)


def test_big_jpeg_decodes_reduced_when_the_loader_shrinks_it(tmp_path):
    Image.fromarray(random_pixels(1600, 1200)).save(tmp_path / "big.jpg", quality=90)
    assert read_image(tmp_path / "big.jpg")[0].shape == (1200, 1600, 3)
    image, reduction = read_image(tmp_path / "big.jpg", reduce_for=0.3)  # needs >= 480x360: 1/2
    assert (image.shape, reduction) == ((600, 800, 3), 2)
    image, reduction = read_image(tmp_path / "big.jpg", reduce_for=0.25)  # needs >= 400x300: 1/4
    assert (image.shape, reduction) == ((300, 400, 3), 4)

    # Through the dataset: boxes follow the reduced decode and the resize exactly.
    record = ImageRecord(path=tmp_path / "big.jpg", image_id=0, width=1600, height=1200,
                         boxes=np.array([[100, 200, 900, 1000]], np.float32), labels=np.array([1]))
    dataset = DetectionDataset([record], Augmentation(resize={"min_size": 300, "max_size": 1000}))
    image, target = dataset[0]
    assert image.shape == (3, 300, 400)
    torch.testing.assert_close(target["boxes"], torch.tensor([[25.0, 50.0, 225.0, 250.0]]))


def test_image_to_tensor_layout_and_scale():
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10  # (H=2, W=3, C=3)
    tensor = image_to_tensor(pixels)
    assert tensor.is_contiguous() and tensor.dtype == torch.float32
    torch.testing.assert_close(tensor, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)


@pytest.mark.parametrize("mode", ["1", "YCbCr"])
def test_other_modes_convert(tmp_path, mode):
    Image.new("RGB", (4, 2), (255, 255, 255)).convert(mode).save(tmp_path / "x.tif")
    image, _ = read_image(tmp_path / "x.tif")
    assert image.shape == (2, 4, 3) and image.dtype == np.uint8
    assert np.abs(image.astype(int) - 255).max() <= 1
