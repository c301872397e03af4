"""The mouth mask (spec 2.2 step 8, spec 12): the published mask.png exactly, its LANCZOS4 resize, its
latent grid, and other mask images named by path."""

from __future__ import annotations

import hashlib
import cv2
import numpy as np
import pytest
import torch

from latentsync.errors import InputError
from latentsync.face.mask import (
    PUBLISHED_MASK_SHA256,
    latent_mask,
    load_mask_image,
    mask_image,
    mouth_mask,
    mouth_mask_tensor,
    published_mask_image,
)

def regenerate_cols(mask: np.ndarray, row: int) -> np.ndarray:
    return np.flatnonzero(mask[row] < 0.5)


def test_default_mask_is_the_published_mask_png():
    # The 256 px mask, back in the image's uint8 values, hashes to the sha256 recorded for mask.png.
    image = np.round(mouth_mask(256) * 255).astype(np.uint8)
    assert hashlib.sha256(image.tobytes()).hexdigest() == PUBLISHED_MASK_SHA256
    assert int((image == 0).sum()) == 26673
    rows = np.flatnonzero((image == 0).any(axis=1))
    assert rows.min() == 95 and rows.max() == 242
    # The straight cheek bands beside the kept nose strip, then the full lower face.
    for row in (95, 110, 127):
        np.testing.assert_array_equal(regenerate_cols(image, row), np.r_[9:78, 178:247])
    np.testing.assert_array_equal(regenerate_cols(image, 150), np.arange(11, 246))  # tapering to the chin
    assert not published_mask_image().flags.writeable


@pytest.mark.parametrize("resolution", [128, 512])
def test_other_resolutions_are_the_reference_lanczos4_resize(resolution):
    expected = cv2.resize(published_mask_image(), (resolution, resolution), interpolation=cv2.INTER_LANCZOS4)
    mask = mouth_mask(resolution)
    assert mask.shape == (resolution, resolution) and mask.dtype == np.float32
    np.testing.assert_array_equal(mask, expected.astype(np.float32) / 255)
    assert ((mask > 0) & (mask < 1)).any()  # LANCZOS4 edges are not exactly 0 / 1, as in the reference
    assert not mask.flags.writeable  # shared through the cache


def test_tensor_and_latent_mask():
    tensor = mouth_mask_tensor(256, dtype=torch.float16)
    assert tensor.shape == (1, 256, 256) and tensor.dtype == torch.float16
    np.testing.assert_array_equal(tensor[0].float().numpy(), mouth_mask(256))
    tensor[0, 100, 20] = 5  # a copy: the cached mask is untouched
    assert mouth_mask(256)[100, 20] == 0

    latent = latent_mask(256)
    assert latent.shape == (1, 32, 32) and latent.dtype == torch.float32
    assert set(latent.unique().tolist()) == {0.0, 1.0}
    # torch's nearest picks pixel 8 i.
    np.testing.assert_array_equal(latent[0].numpy(), mouth_mask(256)[0::8, 0::8])
    large = latent_mask(512)
    assert large.shape == (1, 64, 64)
    np.testing.assert_array_equal(large[0].numpy(), mouth_mask(512)[0::8, 0::8])
    with pytest.raises(ValueError):
        latent_mask(260)


def chin_mask(size: int = 256) -> np.ndarray:
    """A larger mask, as users ask for: the published one with the chin down to the bottom regenerated."""
    image = cv2.resize(published_mask_image(), (size, size), interpolation=cv2.INTER_NEAREST).copy()
    image[size * 3 // 4:, size // 8: size * 7 // 8] = 0
    return image


def test_a_mask_image_named_by_path_is_used(tmp_path):
    path = tmp_path / "chin.png"
    cv2.imwrite(str(path), cv2.cvtColor(chin_mask(), cv2.COLOR_GRAY2BGR))  # 3 equal channels, as mask.png
    np.testing.assert_array_equal(mask_image(path), chin_mask())
    mask = mouth_mask(256, path)
    np.testing.assert_array_equal(mask, chin_mask().astype(np.float32) / 255)
    assert (mask == 0).sum() > (mouth_mask(256) == 0).sum()
    # Another size is resized to the model's resolution.
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), chin_mask(128))
    np.testing.assert_array_equal(
        mouth_mask(256, small), cv2.resize(chin_mask(128), (256, 256), interpolation=cv2.INTER_LANCZOS4) / np.float32(255))
    # Editing the file is seen (the cache is keyed by its mtime and size).
    edited = chin_mask()
    edited[:20] = 0
    cv2.imwrite(str(path), edited)
    assert mouth_mask(256, path)[:20].max() == 0
    # The published configs' value and "" mean the built-in mask.
    assert mouth_mask(256, "latentsync/utils/mask.png") is mouth_mask(256)
    assert mouth_mask(256, "") is mouth_mask(256)


def test_bad_mask_images_get_one_line_naming_the_file(tmp_path):
    grey = chin_mask()
    grey[0, 0] = 128
    cases = {
        "missing.png": (None, "not found"),
        "garbage.png": (b"not an image", "not a readable 8-bit image"),
        "colour.png": (np.dstack([chin_mask(), chin_mask(), np.zeros((256, 256), np.uint8)]), "colour"),
        "wide.png": (np.zeros((256, 300), np.uint8), "square"),
        "grey.png": (grey, "not binary"),
        "white.png": (np.full((256, 256), 255, np.uint8), "all white"),
    }
    for name, (content, words) in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            cv2.imwrite(str(path), content)
        with pytest.raises(InputError) as err:
            load_mask_image(path)
        message = str(err.value)
        assert str(path) in message and words in message and "\n" not in message, message
        with pytest.raises(InputError):
            mouth_mask(256, path)
