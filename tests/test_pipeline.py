"""LipSyncPipeline: the published chunk algorithm on tensors (masking, 13-channel input, guidance, noise)."""

from __future__ import annotations

import pytest
import torch

from latentsync.demo import DEMO_RESOLUTION, UNET_CONFIG_NAME, write_tiny_checkpoints
from latentsync.face.mask import mouth_mask
from latentsync.models import load_unet
from latentsync.models.vae import load_vae
from latentsync.pipeline import LipSyncPipeline, SamplingOptions, make_scheduler

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
    return pipeline(faces, tokens, pipeline.initial_noise(seed), options, generator=torch.Generator().manual_seed(1))


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
    out = run(plain, faces, tokens)
    regenerate = torch.tensor(mouth_mask(R)) == 0.0
    assert torch.equal(out[0][regenerate], out[1][regenerate])
    assert torch.equal(out[0][regenerate], out[2][regenerate])
    assert not torch.equal(faces[0][regenerate], faces[1][regenerate])


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
    one_by_one = [pipeline(faces_a, tokens_a, noise, FAST, generator=g), pipeline(faces_b, tokens_b, noise, FAST, generator=g)]
    g = torch.Generator().manual_seed(5)
    batched = pipeline(torch.stack([faces_a, faces_b]), torch.stack([tokens_a, tokens_b]), noise, FAST, generator=g)
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
