"""The mouth mask (spec 2.2 step 8): our drawing of the published geometry, its resize and its latent grid."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from latentsync.face.mask import latent_mask, mouth_mask, mouth_mask_tensor


def regenerate_cols(mask: np.ndarray, row: int) -> np.ndarray:
    return np.flatnonzero(mask[row] < 0.5)


@pytest.mark.parametrize("resolution", [256, 512])
def test_shape_dtype_range(resolution):
    mask = mouth_mask(resolution)
    assert mask.shape == (resolution, resolution) and mask.dtype == np.float32
    assert mask.min() == 0.0 and mask.max() == 1.0
    assert not mask.flags.writeable  # shared through the cache


def test_256_is_binary_with_about_41_percent_regenerated():
    mask = mouth_mask(256)
    assert set(np.unique(mask).tolist()) == {0.0, 1.0}
    assert 0.38 <= float((mask == 0).mean()) <= 0.44


def test_regions():
    mask = mouth_mask(256)
    assert (mask[:90] == 1).all()  # eyes, brows and the upper nose are kept
    assert (mask[243:] == 1).all()  # below the chin
    assert mask[180, 128] == 0 and mask[150, 60] == 0 and mask[150, 200] == 0  # mouth and lower cheeks
    assert mask[110, 128] == 1  # the nose strip is kept ...
    assert mask[110, 30] == 0 and mask[110, 226] == 0  # ... between the cheek lobes
    # Full width (columns 9-247) from row 128, tapering to a chin point.
    np.testing.assert_array_equal(regenerate_cols(mask, 150), np.arange(9, 248))
    assert (mask[128:200, :9] == 1).all() and (mask[128:200, 248:] == 1).all()
    widths = [regenerate_cols(mask, r).size for r in (160, 200, 225, 240)]
    assert widths[0] > widths[1] > widths[2] > widths[3] > 0
    rows = np.flatnonzero((mask == 0).any(axis=1))
    assert rows.min() == 95 and rows.max() == 242
    np.testing.assert_array_equal(mask[:, 1:], mask[:, 1:][:, ::-1])  # symmetric about column 128


def test_512_is_the_256_mask_resized():
    small, large = mouth_mask(256), mouth_mask(512)
    upsampled = cv2.resize(small, (512, 512), interpolation=cv2.INTER_NEAREST)
    assert np.abs(upsampled - large).mean() < 0.01
    # LANCZOS4 edges: not exactly 0 / 1 (as the reference's resize of its PNG).
    assert ((large > 0) & (large < 1)).any()


def test_tensor_and_latent_mask():
    tensor = mouth_mask_tensor(256, dtype=torch.float16)
    assert tensor.shape == (1, 256, 256) and tensor.dtype == torch.float16
    np.testing.assert_array_equal(tensor[0].float().numpy(), mouth_mask(256))
    tensor[0, 0, 0] = 5  # a copy: the cached mask is untouched
    assert mouth_mask(256)[0, 0] == 1

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
