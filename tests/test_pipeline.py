"""LipSyncPipeline: the published chunk algorithm on tensors (masking, 13-channel input, guidance, noise)."""

from __future__ import annotations

import pytest
import torch

from latentsync.demo import DEMO_RESOLUTION, UNET_CONFIG_NAME, write_tiny_checkpoints
from latentsync.face.mask import mouth_mask
from latentsync.models import load_unet
from latentsync.models.vae import load_vae
from latentsync.pipeline import LipSyncPipeline, LipSyncPipelineOutput, SamplingOptions, make_scheduler

R = DEMO_RESOLUTION


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return write_tiny_checkpoints(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def pipeline(checkpoints):
    unet = load_unet(checkpoints / UNET_CONFIG_NAME, checkpoints / "latentsync_unet.pt")
    vae = load_vae(checkpoints / "sd-vae-ft-mse")
    return LipSyncPipeline(unet, vae, R)


def faces_and_tokens(f: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    faces = torch.randint(0, 256, (f, R, R, 3), generator=g, dtype=torch.uint8)
    return faces, torch.randn(f, 50, 384, generator=g)


FAST = SamplingOptions(num_steps=3, guidance_scale=1.5)


def run(pipeline, faces, tokens, seed=7, options=FAST):
    return pipeline(faces, tokens, options, latents=pipeline.initial_noise(seed), generator=torch.Generator().manual_seed(1))


def test_only_the_mouth_region_changes(pipeline):
    faces, tokens = faces_and_tokens(5)
    out = run(pipeline, faces, tokens)
    assert out.shape == faces.shape and out.dtype == torch.uint8
    keep = torch.tensor(mouth_mask(R)) == 1.0  # pixels the mask keeps entirely
    regenerate = torch.tensor(mouth_mask(R)) == 0.0
    # Kept pixels come back exactly (the paste uses the face itself there); the mouth is generated.
    assert torch.equal(out[:, keep], faces[:, keep])
    assert (out[:, regenerate].float() - faces[:, regenerate].float()).abs().mean() > 10


def test_seeds_make_runs_reproducible(pipeline):
    faces, tokens = faces_and_tokens(3)
    assert torch.equal(run(pipeline, faces, tokens, seed=3), run(pipeline, faces, tokens, seed=3))
    assert not torch.equal(run(pipeline, faces, tokens, seed=3), run(pipeline, faces, tokens, seed=4))


def test_guidance_doubles_the_batch_with_zero_audio_first(pipeline, monkeypatch):
    calls = []
    forward = pipeline.unet.forward

    def spy(sample, timestep, encoder_hidden_states=None, **kwargs):
        calls.append((sample.shape[0], encoder_hidden_states.clone()))
        return forward(sample, timestep, encoder_hidden_states=encoder_hidden_states, **kwargs)

    monkeypatch.setattr(pipeline.unet, "forward", spy)
    faces, tokens = faces_and_tokens(4)
    run(pipeline, faces, tokens, options=SamplingOptions(num_steps=2, guidance_scale=1.5))
    assert [b for b, _ in calls] == [2, 2]
    audio = calls[0][1]  # (2 * 4, 50, 384): [unconditional frames, conditional frames]
    assert torch.count_nonzero(audio[:4]) == 0
    torch.testing.assert_close(audio[4:], tokens)
    calls.clear()
    run(pipeline, faces, tokens, options=SamplingOptions(num_steps=2, guidance_scale=1.0))
    assert [b for b, _ in calls] == [1, 1]  # guidance 1 skips the unconditional branch entirely


def test_thirteen_channel_input_order(pipeline, monkeypatch):
    seen = []
    forward = pipeline.unet.forward

    def spy(sample, timestep, encoder_hidden_states=None, **kwargs):
        seen.append(sample.clone())
        return forward(sample, timestep, encoder_hidden_states=encoder_hidden_states, **kwargs)

    monkeypatch.setattr(pipeline.unet, "forward", spy)
    faces, tokens = faces_and_tokens(2)
    run(pipeline, faces, tokens, options=SamplingOptions(num_steps=1, guidance_scale=1.0))
    x = seen[0]  # (1, 13, 2, r, r)
    assert x.shape == (1, 13, 2, R // 8, R // 8)
    torch.testing.assert_close(x[:, 4], pipeline.latent_mask.expand(2, -1, -1)[None])  # channel 4: the mask
    # Channels 0-3 start as the job noise, the same latent frame for every frame.
    torch.testing.assert_close(x[:, :4, 0], x[:, :4, 1])
    torch.testing.assert_close(x[:, :4, :1], pipeline.initial_noise(7))
    # Masked-face latents (5-8) differ from reference latents (9-12): the mouth is blacked out in the former.
    assert (x[:, 5:9] - x[:, 9:13]).abs().mean() > 1e-3


def test_frames_share_the_initial_noise(pipeline, checkpoints):
    """An untrained UNet predicts no noise (its conv_out starts at zero), so each frame's latent is a function of
    the shared initial noise alone: the regenerated mouths are identical although the faces differ."""
    plain = LipSyncPipeline(load_unet(checkpoints / UNET_CONFIG_NAME), pipeline.vae, R)
    faces, tokens = faces_and_tokens(3)
    out = plain(faces, tokens, FAST, latents=plain.initial_noise(7), generator=torch.Generator().manual_seed(1),
                output_type="float")
    regenerate = torch.tensor(mouth_mask(R)) == 0.0
    # Equal up to float rounding (the three frames are decoded in one VAE call).
    torch.testing.assert_close(out[0][regenerate], out[1][regenerate], rtol=0, atol=1e-2)
    torch.testing.assert_close(out[0][regenerate], out[2][regenerate], rtol=0, atol=1e-2)
    assert (faces[0][regenerate].float() - faces[1][regenerate].float()).abs().mean() > 10


def test_dpm_solver_runs_and_differs_from_ddim(pipeline):
    faces, tokens = faces_and_tokens(2)
    ddim = run(pipeline, faces, tokens, options=SamplingOptions(num_steps=3, scheduler="ddim"))
    dpm = run(pipeline, faces, tokens, options=SamplingOptions(num_steps=3, scheduler="dpm++"))
    assert dpm.shape == ddim.shape and not torch.equal(dpm, ddim)


def test_published_ddim_timesteps():
    scheduler = make_scheduler("ddim")
    scheduler.set_timesteps(20)
    assert scheduler.timesteps.tolist() == list(range(951, 0, -50))  # 951, 901, ..., 1 (spec 2.1)


def test_bad_arguments(pipeline):
    faces, tokens = faces_and_tokens(3)
    with pytest.raises(ValueError, match=r"1 x 3 faces but audio tokens for \(1, 2\) frames"):
        run(pipeline, faces, tokens[:2])
    with pytest.raises(ValueError, match="unknown scheduler"):
        SamplingOptions(scheduler="euler")


def test_deepcache_runs_the_deep_layers_every_nth_step(pipeline, monkeypatch):
    calls = []
    mid = pipeline.unet.mid_block.forward
    monkeypatch.setattr(pipeline.unet.mid_block, "forward", lambda *a, **k: calls.append(1) or mid(*a, **k))
    faces, tokens = faces_and_tokens(3)
    exact = run(pipeline, faces, tokens, options=SamplingOptions(num_steps=5))
    assert len(calls) == 5
    calls.clear()
    cached = run(pipeline, faces, tokens, options=SamplingOptions(num_steps=5, deepcache_interval=3))
    assert len(calls) == 2  # steps 0 and 3 (the cache restarts with each chunk)
    assert cached.shape == exact.shape and not torch.equal(cached, exact)


def test_a_batch_of_chunks_equals_chunk_by_chunk(pipeline):
    faces_a, tokens_a = faces_and_tokens(4, seed=1)
    faces_b, tokens_b = faces_and_tokens(4, seed=2)
    noise = pipeline.initial_noise(7)
    g = torch.Generator().manual_seed(5)
    one_by_one = [pipeline(faces_a, tokens_a, FAST, latents=noise, generator=g),
                  pipeline(faces_b, tokens_b, FAST, latents=noise, generator=g)]
    g = torch.Generator().manual_seed(5)
    batched = pipeline(torch.stack([faces_a, faces_b]), torch.stack([tokens_a, tokens_b]), FAST, latents=noise,
                       generator=g)
    assert batched.shape == (2, 4, R, R, 3)
    for got, want in zip(batched, one_by_one):
        assert (got.int() - want.int()).abs().max() <= 1  # rounding of float noise from other batch shapes


def test_split_guidance_gives_the_same_faces(pipeline, monkeypatch):
    faces, tokens = faces_and_tokens(3)
    together = run(pipeline, faces, tokens, options=SamplingOptions(num_steps=3, guidance_scale=1.5))
    batches = []
    forward = pipeline.unet.forward
    monkeypatch.setattr(pipeline.unet, "forward",
                        lambda sample, *a, **k: batches.append(sample.shape[0]) or forward(sample, *a, **k))
    split = run(pipeline, faces, tokens, options=SamplingOptions(num_steps=3, guidance_scale=1.5,
                                                                 split_guidance=True, deepcache_interval=2))
    assert batches == [1, 1] * 3  # two half-size calls per step
    plain = run(pipeline, faces, tokens, options=SamplingOptions(num_steps=3, guidance_scale=1.5,
                                                                 deepcache_interval=2))
    assert (split.int() - plain.int()).abs().max() <= 1
    monkeypatch.undo()
    assert (run(pipeline, faces, tokens, options=SamplingOptions(num_steps=3, guidance_scale=1.5,
                                                                 split_guidance=True)).int()
            - together.int()).abs().max() <= 1


def test_latents_generator_and_output_types(pipeline):
    """diffusers' conventions: `latents` is the initial noise, `generator` draws it when it is not given, and
    `output_type` / `return_dict` choose what comes back."""
    faces, tokens = faces_and_tokens(3)
    # No latents: one frame drawn from the generator (as initial_noise), then the VAE's draws from the same one.
    drawn = pipeline(faces, tokens, FAST, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    given = pipeline(faces, tokens, FAST, latents=pipeline.initial_noise(generator=g), generator=g)
    assert torch.equal(drawn, given)

    noise = torch.randn(4, 3, R // 8, R // 8, generator=torch.Generator().manual_seed(9))  # one per frame
    result = pipeline(faces, tokens, FAST, latents=noise, generator=torch.Generator().manual_seed(1),
                      output_type="float", return_dict=True)
    assert isinstance(result, LipSyncPipelineOutput)
    assert result.faces.shape == faces.shape and result.faces.dtype == torch.float32
    assert result.latents.shape == (4, 3, R // 8, R // 8)
    assert not torch.allclose(result.latents[:, 0], result.latents[:, 1])  # the frames' own noise
    uint8 = pipeline(faces, tokens, FAST, latents=noise, generator=torch.Generator().manual_seed(1))
    assert torch.equal(uint8, result.faces.round().clamp(0, 255).to(torch.uint8))
    latents = pipeline(faces, tokens, FAST, latents=noise, generator=torch.Generator().manual_seed(1),
                       output_type="latent")
    torch.testing.assert_close(latents, result.latents)
    with pytest.raises(ValueError, match="latents of shape"):
        pipeline(faces, tokens, FAST, latents=noise[:, :2])
    with pytest.raises(ValueError, match="unknown output_type"):
        pipeline(faces, tokens, FAST, output_type="pil")


def test_the_blend_is_unclamped_as_the_reference(pipeline, monkeypatch):
    """Decoded values outside [-1, 1] are blended as they are; only the uint8 output (or the paste-back, for
    float faces) clamps, after the blend."""
    import latentsync.pipeline as module

    decoded = torch.tensor([1.6, -1.4, 0.2]).view(1, 3, 1, 1)  # channels beyond [-1, 1]
    monkeypatch.setattr(module, "decode_frames", lambda vae, x, slice_size=None: decoded.expand(x.shape[0], 3, R, R))
    faces, tokens = faces_and_tokens(2)
    out = pipeline(faces, tokens, FAST, generator=torch.Generator().manual_seed(1), output_type="float")
    m = torch.from_numpy(mouth_mask(R).copy())[..., None]  # R R 1, 1 = keep
    reference = faces.float() / 127.5 - 1
    expected = (decoded.view(3) * (1 - m) + reference * m + 1) * 127.5
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-3)
    regenerate = m[..., 0] == 0
    assert out[:, regenerate, 0].min() > 255 and out[:, regenerate, 1].max() < 0  # not clamped
    # On the mask's soft edge the order matters: clamping first would give another value.
    edge = (m[..., 0] > 0.2) & (m[..., 0] < 0.8)
    assert edge.any()
    clamped_first = (decoded.view(3).clamp(-1, 1) * (1 - m) + reference * m + 1) * 127.5
    assert (out[:, edge] - clamped_first[:, edge]).abs().max() > 10
    uint8 = pipeline(faces, tokens, FAST, generator=torch.Generator().manual_seed(1))
    assert torch.equal(uint8, expected.round().clamp(0, 255).to(torch.uint8))


def test_a_mask_for_one_call(pipeline, tmp_path):
    import cv2
    import numpy as np

    faces, tokens = faces_and_tokens(2)
    square = torch.ones(1, R, R)
    square[:, 8:24, 8:24] = 0  # regenerate a square only
    out = pipeline(faces, tokens, FAST, mask=square, generator=torch.Generator().manual_seed(1))
    inside = square[0] == 0
    assert torch.equal(out[:, ~inside], faces[:, ~inside])
    assert (out[:, inside].float() - faces[:, inside].float()).abs().mean() > 10
    # The pipeline's own mask is untouched: the next call without a mask uses the published one.
    torch.testing.assert_close(pipeline.pixel_mask[0].cpu(), torch.from_numpy(mouth_mask(R).copy()))
    # A mask image by path gives the same as its tensor.
    cv2.imwrite(str(tmp_path / "square.png"), (square[0].numpy() * 255).astype(np.uint8))
    by_path = pipeline(faces, tokens, FAST, mask=tmp_path / "square.png", generator=torch.Generator().manual_seed(1))
    assert torch.equal(by_path, out)
    with pytest.raises(ValueError, match="a mask of shape"):
        pipeline(faces, tokens, FAST, mask=torch.ones(1, R, R + 8))


def test_vae_slices_give_the_same_faces(pipeline):
    faces, tokens = faces_and_tokens(3)
    whole = run(pipeline, faces, tokens, options=SamplingOptions(num_steps=2, vae_slice=0))
    sliced = run(pipeline, faces, tokens, options=SamplingOptions(num_steps=2, vae_slice=2))
    assert (whole.int() - sliced.int()).abs().max() <= 1
