"""The low-memory mode's parts (feed-forward slices, idle models off the device) and the device-memory estimate
that measures them without a GPU."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from latentsync.demo import TINY_VAE_CONFIG
from latentsync.estimate import DeviceMemoryTrace, estimate_chunk_memory
from latentsync.models.attention import FeedForward, feed_forward_rows
from latentsync.models.offload import Offloaded
from latentsync.pipeline import SamplingOptions

MB = 2**20


# ---- the trace ----------------------------------------------------------------------------------------------


def test_trace_counts_live_storages_and_their_peak():
    with DeviceMemoryTrace() as trace:
        a = torch.empty(MB // 4, device="meta")  # 1 MB of float32
        b = a * 2  # 2 MB live
        assert trace.live == 2 * MB
        view = b.view(16, -1).t()  # a view is not new memory
        assert trace.live == 2 * MB
        del a
        assert trace.live == MB
        c = view.contiguous()  # a copy is
        del b, view, c
        assert trace.live == 0
    assert trace.peak == 2 * MB


def test_trace_ignores_host_tensors_and_hands_back_host_copies():
    with DeviceMemoryTrace() as trace:
        host = torch.ones(1000)
        device = host.to("meta")
        back = device.cpu()
    assert trace.peak == 4000  # only the device copy
    assert back.device.type == "cpu" and back.shape == host.shape


# ---- feed-forward slices --------------------------------------------------------------------------------------


def test_feed_forward_slices_give_the_same_result():
    torch.manual_seed(0)
    model = nn.Sequential(FeedForward(32), FeedForward(32)).eval()
    x = torch.randn(3, 50, 32)
    seen = []
    hook = model[0].net[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    with torch.no_grad():
        whole = model(x)
        with feed_forward_rows(64):
            sliced = model(x)
            # Another thread running the same modules meanwhile sees no limit: the setting is this thread's.
            other = []
            thread = threading.Thread(target=lambda: other.append(model(x)))
            thread.start()
            thread.join()
        after = model(x)
    hook.remove()
    # all (3, 50, 32) at once, then 150 tokens in slices of 64, then the other thread and after: whole again
    assert seen == [3, 64, 64, 22, 3, 3], seen
    torch.testing.assert_close(sliced, whole, rtol=0, atol=1e-6)
    torch.testing.assert_close(other[0], whole, rtol=0, atol=0)
    torch.testing.assert_close(after, whole, rtol=0, atol=0)
    with pytest.raises(ValueError):
        with feed_forward_rows(-1):
            pass


# ---- offloading -------------------------------------------------------------------------------------------------


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight  # a tensor shared by two modules
        self.register_buffer("scale", torch.full((4,), 2.0))


def test_offloaded_module_visits_the_device_only_while_used():
    module = Tied().requires_grad_(False)
    weight = module.a.weight.detach().clone()
    off = Offloaded(module, "meta")  # a device that is not the host: weights really move
    assert module.a.weight.device.type == "cpu" and module.scale.device.type == "cpu"
    assert not off.resident
    with off.use():
        assert off.resident
        assert {t.device.type for t in [*module.parameters(), *module.buffers()]} == {"meta"}
        assert module.b.weight is module.a.weight  # still tied
        visiting = module.a.weight
        with off.use():  # a second user (another job) keeps it there
            pass
        assert module.a.weight.device.type == "meta"
    assert not off.resident
    assert module.a.weight.device.type == "cpu"
    torch.testing.assert_close(module.a.weight, weight)  # the host copy is the one kept
    with off.use():  # the same device tensors on every visit (compiled code guards on them), whole again
        assert module.a.weight is visiting and module.a.weight.shape == (4, 4)


def test_offloaded_vae_is_on_the_device_only_to_encode_and_decode(checkpoints):
    from latentsync.demo import DEMO_RESOLUTION, UNET_CONFIG_NAME
    from latentsync.models import load_unet
    from latentsync.models.vae import load_vae
    from latentsync.pipeline import LipSyncPipeline

    unet = load_unet(checkpoints / UNET_CONFIG_NAME, checkpoints / "latentsync_unet.pt")
    plain = LipSyncPipeline(unet, load_vae(checkpoints / "sd-vae-ft-mse"), DEMO_RESOLUTION)
    vae = load_vae(checkpoints / "sd-vae-ft-mse")
    offloaded = LipSyncPipeline(unet, vae, DEMO_RESOLUTION, offload_vae=True)
    states = []
    hooks = [unet.register_forward_pre_hook(lambda *a: states.append(("unet", offloaded.vae_offload.resident))),
             vae.encoder.register_forward_pre_hook(lambda *a: states.append(("vae", offloaded.vae_offload.resident))),
             vae.decoder.register_forward_pre_hook(lambda *a: states.append(("vae", offloaded.vae_offload.resident)))]
    g = torch.Generator().manual_seed(0)
    faces = torch.randint(0, 256, (4, DEMO_RESOLUTION, DEMO_RESOLUTION, 3), generator=g, dtype=torch.uint8)
    tokens = torch.randn(4, 50, 384, generator=g)
    options = SamplingOptions(num_steps=2)
    runs = [p(faces, tokens, options, latents=p.initial_noise(3), generator=torch.Generator().manual_seed(1))
            for p in (plain, offloaded)]
    for h in hooks:
        h.remove()
    offloaded_states = states[len(states) // 2:]  # the hooks saw both runs (the UNet is shared)
    assert ("unet", False) in offloaded_states and ("vae", True) in offloaded_states
    assert ("unet", True) not in offloaded_states and ("vae", False) not in offloaded_states
    assert torch.equal(runs[0], runs[1])


def test_offloaded_whisper_gives_the_same_features(tmp_path):
    import numpy as np

    from latentsync.audio import WhisperAudioEncoder
    from whisper_util import write_whisper_checkpoint

    path = write_whisper_checkpoint(tmp_path / "tiny.pt")
    samples = np.random.default_rng(0).standard_normal(16_000 * 2).astype(np.float32) * 0.1
    plain = WhisperAudioEncoder(path, cache_dir=False).hidden_states(samples)
    encoder = WhisperAudioEncoder(path, cache_dir=False, offload=True)
    assert torch.equal(encoder.hidden_states(samples), plain)
    assert not encoder._offload.resident


# ---- the estimate ---------------------------------------------------------------------------------------------


def estimate(frames=2, **kwargs):
    return estimate_chunk_memory("tiny/unet", dtype=torch.float32, vae_config=TINY_VAE_CONFIG, frames=frames, **kwargs)


def test_estimate_sees_what_each_memory_setting_saves():
    base = estimate()
    assert base.peak > base.resident > 0
    assert set(base.phases) >= {"unet", "vae encode", "vae decode"}
    assert base.peak == max(base.phases.values())

    split = estimate(sampling=SamplingOptions(split_guidance=True))
    assert split.phases["unet"] < base.phases["unet"]
    assert split.resident == base.resident
    sliced = estimate(sampling=SamplingOptions(split_guidance=True, feed_forward_rows=64))
    assert sliced.phases["unet"] < split.phases["unet"]

    offloaded = estimate(offload=True)
    from diffusers import AutoencoderKL

    vae_bytes = sum(p.numel() * 4 for p in AutoencoderKL(**TINY_VAE_CONFIG).parameters())
    assert base.resident - offloaded.resident >= vae_bytes  # and Whisper's weights
    assert offloaded.phases["unet"] < base.phases["unet"]

    one_frame = estimate(sampling=SamplingOptions(vae_slice=1))  # base: whole-chunk VAE calls, as the reference
    assert one_frame.phases["vae decode"] < base.phases["vae decode"]
    assert one_frame.phases["vae encode"] < base.phases["vae encode"]
    two = estimate(batch_chunks=2)
    assert two.phases["unet"] > base.phases["unet"]


def test_vae_slice_is_the_largest_that_keeps_the_vae_under_the_budget():
    from latentsync.estimate import choose_vae_slice

    def vae_peak(size):  # the job's peak while the VAE works, with `size` frames per VAE call
        e = estimate(sampling=SamplingOptions(vae_slice=size), frames=6)
        return max(e.phases["vae encode"], e.phases["vae decode"]), e.phases["unet"]

    choose = dict(dtype=torch.float32, vae_config=TINY_VAE_CONFIG, frames=6)
    whole, unet = vae_peak(0)
    one = vae_peak(1)[0]
    assert one > unet  # the tiny UNet is smaller than the VAE: even one frame per call exceeds its peak
    assert choose_vae_slice("tiny/unet", **choose) == 1  # so the fewest frames per call
    # With a budget (a device with memory to spare): the most frames per call that fit, or whole chunks.
    budget = vae_peak(4)[0]
    size = choose_vae_slice("tiny/unet", budget=budget, **choose)
    assert size in (3, 4) and vae_peak(size)[0] <= budget < vae_peak(size + 2)[0]
    assert choose_vae_slice("tiny/unet", budget=whole, **choose) == 0


def test_flop_count_follows_steps_guidance_and_deepcache():
    from latentsync.estimate import count_chunk_flops

    def unet(**options):
        count = count_chunk_flops("tiny/unet", dtype=torch.float32, vae_config=TINY_VAE_CONFIG, frames=2,
                                  sampling=SamplingOptions(**options))
        assert count.total == sum(count.phases.values()) and count.phases["vae encode"] > 0
        return count.phases["unet"]

    guided = unet(num_steps=2)
    assert unet(num_steps=1) * 2 == guided  # each step is one UNet call of the same size
    assert unet(num_steps=2, guidance_scale=1.0) * 2 == guided  # no unconditional half of the batch
    assert unet(num_steps=2, split_guidance=True) == guided  # the same work in two calls
    cached = unet(num_steps=2, deepcache_interval=2)  # a full pass, then a shallow one
    assert guided / 2 < cached < guided * 0.75
