"""Whisper frame embeddings (reference segmentation, overlap stitching, slicing, cache) and the SyncNet mel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from latentsync.audio import (
    HIDDEN_RATE_HZ,
    SAMPLE_RATE_HZ,
    WINDOW_ROWS,
    WhisperAudioEncoder,
    crossfade_weights,
    default_cache_dir,
    frame_embeddings_from_hidden,
    frame_window,
    mel_window,
    num_video_frames,
    overlap_window_starts,
    syncnet_mel,
)
from latentsync.errors import CheckpointError, InputError
from latentsync.media import write_wav

from whisper_util import SMALL_DIMS, write_whisper_checkpoint

whisper = pytest.importorskip("whisper")

LONG_S = 65  # three reference windows: 30 s + 30 s + 5 s (padded)
SHORT_S = 3


def tone_with_noise(seconds: float, seed: int = 0, freq_hz: float = 220.0) -> np.ndarray:
    """A steady tone plus a little seeded noise: stationary, so any jump in the features is the windowing's."""
    n = int(seconds * SAMPLE_RATE_HZ)
    t = np.arange(n) / SAMPLE_RATE_HZ
    noise = np.random.default_rng(seed).standard_normal(n)
    return (0.3 * np.sin(2 * np.pi * freq_hz * t) + 0.05 * noise).astype(np.float32)


def states_with_hooks(encoder, segment: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(1500, L+1, D) hidden states captured by hooks around the package's own forward, and its output."""
    captured = []
    handles = [encoder.blocks[0].register_forward_pre_hook(lambda m, args: captured.append(args[0]))]
    handles += [b.register_forward_hook(lambda m, args, out: captured.append(out)) for b in encoder.blocks]
    try:
        with torch.no_grad(), whisper.model.disable_sdpa():
            out = encoder(segment[None])
    finally:
        for h in handles:
            h.remove()
    return torch.stack(captured, dim=2)[0], out[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_whisper_checkpoint(tmp_path_factory.mktemp("whisper") / "small.pt", seed=0)


@pytest.fixture(scope="module")
def encoder(checkpoint):
    return WhisperAudioEncoder(checkpoint, cache_dir=False)


@pytest.fixture(scope="module")
def long_audio():
    return tone_with_noise(LONG_S)


@pytest.fixture(scope="module")
def long_reference(encoder, long_audio):
    return encoder.hidden_states(long_audio, window="reference")


@pytest.fixture(scope="module")
def long_overlap(encoder, long_audio):
    return encoder.hidden_states(long_audio, window="overlap")


# ---- loading ------------------------------------------------------------------------------------------------


def test_loads_dims_and_defaults(encoder):
    assert encoder.dims.n_audio_state == SMALL_DIMS["n_audio_state"]
    assert encoder.num_states == SMALL_DIMS["n_audio_layer"] + 1
    assert encoder.device.type == "cpu" and encoder.dtype == torch.float32
    assert encoder.cache_dir is None


def test_checkpoint_errors_name_the_file(tmp_path, checkpoint):
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="nope.pt"):
        WhisperAudioEncoder(missing, cache_dir=False)

    obj = torch.load(checkpoint, weights_only=True)
    del obj["model_state_dict"]["encoder.blocks.0.attn.query.weight"]
    torch.save(obj, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="broken.pt.*missing"):
        WhisperAudioEncoder(tmp_path / "broken.pt", cache_dir=False)

    torch.save({"weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt.*not an OpenAI Whisper"):
        WhisperAudioEncoder(tmp_path / "other.pt", cache_dir=False)


# ---- per-layer extraction and the reference segmentation -------------------------------------------------


def test_last_state_after_ln_post_is_the_package_forward(encoder):
    samples = tone_with_noise(12.0)
    hidden = encoder.hidden_states(samples, window="reference")  # (600, L+1, D)
    mel = whisper.audio.pad_or_trim(whisper.audio.log_mel_spectrogram(torch.from_numpy(samples)), 3000)
    with torch.no_grad(), whisper.model.disable_sdpa():
        expected = encoder.encoder(mel[None])[0]  # (1500, D)
        got = encoder.encoder.ln_post(hidden[:, -1])
    torch.testing.assert_close(got, expected[: hidden.shape[0]], rtol=1e-6, atol=1e-6)


def test_reference_matches_straightforward_whisper_segmentation(encoder, long_audio, long_reference):
    mel = whisper.audio.log_mel_spectrogram(torch.from_numpy(long_audio))  # (80, 6500)
    n_mel = mel.shape[-1]
    parts, seek = [], 0
    while seek < n_mel:
        segment = whisper.audio.pad_or_trim(mel[:, seek:], 3000)
        states, out = states_with_hooks(encoder.encoder, segment)
        with torch.no_grad():
            torch.testing.assert_close(encoder.encoder.ln_post(states[:, -1]), out, rtol=1e-6, atol=1e-6)
        end_seek = min(seek + 3000, n_mel)
        parts.append(states[: int((end_seek - seek) / 2)])
        seek += 3000
    expected = torch.cat(parts)

    n50 = LONG_S * HIDDEN_RATE_HZ
    assert long_reference.shape == (n50, SMALL_DIMS["n_audio_layer"] + 1, SMALL_DIMS["n_audio_state"])
    assert long_reference.dtype == torch.float32
    torch.testing.assert_close(long_reference, expected, rtol=1e-6, atol=1e-6)
    frames = frame_embeddings_from_hidden(long_reference)
    assert frames.shape == (n50 // 2 + 2, 10 * encoder.num_states, SMALL_DIMS["n_audio_state"])


# ---- frame slicing ---------------------------------------------------------------------------------------


def synthetic_hidden(n_rows: int, n_states: int = 3, width: int = 2) -> torch.Tensor:
    """hidden[r, l, d] = 100 r + l: every token tells which row and layer it came from."""
    rows = torch.arange(n_rows, dtype=torch.float32)[:, None, None] * 100
    layers = torch.arange(n_states, dtype=torch.float32)[None, :, None]
    return (rows + layers).expand(n_rows, n_states, width).clone()


def expected_tokens(rows: list[int], n_states: int = 3) -> torch.Tensor:
    return torch.tensor([100.0 * r + l for r in rows for l in range(n_states)])


def test_frame_slicing_centres_clamping_and_token_order():
    hidden = synthetic_hidden(11)  # N50 = 11
    frames = frame_embeddings_from_hidden(hidden, fps=25)
    assert frames.shape == (11 // 2 + 2, 10 * 3, 2)
    torch.testing.assert_close(frames[0, :, 0], expected_tokens([0, 0, 0, 0, 0, 1, 2, 3, 4, 5]))
    torch.testing.assert_close(frames[1, :, 0], expected_tokens([0, 0, 0, 1, 2, 3, 4, 5, 6, 7]))
    # The last frame (6) is centred on row 12, past the end: everything clamps to row 10.
    torch.testing.assert_close(frames[-1, :, 0], expected_tokens([8, 9, 10, 10, 10, 10, 10, 10, 10, 10]))
    torch.testing.assert_close(frames[..., 1], frames[..., 0])

    crop = frame_window(hidden, start_frame=2, num_frames=3)
    torch.testing.assert_close(crop, frames[2:5])


@pytest.mark.parametrize("fps", [25, 12.5, 30, 24, 50])
def test_every_frame_rate_slices_as_the_per_frame_formula(fps):
    """Evenly spaced centres take a zero-copy strided path, others a gather: both must equal the formula."""
    hidden = synthetic_hidden(37)
    frames = frame_embeddings_from_hidden(hidden, fps=fps)
    for i in range(frames.shape[0]):
        centre = int(i * 50 / fps)
        rows = [min(max(r, 0), 36) for r in range(centre - 4, centre + 6)]
        torch.testing.assert_close(frames[i, :, 1], expected_tokens(rows))
    for start, count in ((0, 1), (3, 4), (frames.shape[0] - 2, 2)):
        torch.testing.assert_close(frame_window(hidden, start, count, fps=fps), frames[start : start + count])


def test_frame_count_is_the_references():
    for n50 in range(1, 80):
        assert num_video_frames(n50, fps=25) == n50 // 2 + 2
    # Other rates follow the same loop: frames while int(i * 50 / fps) <= N50, plus one.
    assert num_video_frames(100, fps=30) == sum(1 for i in range(200) if int(i * 50 / 30) <= 100) + 1


# ---- overlap mode ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [12.3, 30.0])
def test_overlap_is_reference_up_to_30_s(encoder, seconds):
    samples = tone_with_noise(seconds, seed=1)
    calls = encoder.encoder_calls
    ref = encoder.hidden_states(samples, window="reference")
    ovl = encoder.hidden_states(samples, window="overlap")
    assert encoder.encoder_calls == calls + 2  # one window each, no cache
    assert torch.equal(ref, ovl)


def test_overlap_windows_cover_all_rows_and_cross_fade():
    for n_rows in [1501, 2200, 2501, 3250, 3600, 9000]:
        starts = overlap_window_starts(n_rows)
        assert starts[0] == 0 and starts[-1] == n_rows - WINDOW_ROWS
        assert all(0 < b - a <= 1000 for a, b in zip(starts, starts[1:]))
        total = torch.zeros(n_rows, dtype=torch.float64)
        for s, w in zip(starts, crossfade_weights(starts)):
            total[s : s + WINDOW_ROWS] += w
            if s > 0:
                assert w[0] < 0.01  # a window's first row barely counts inside an overlap
            if s + WINDOW_ROWS < n_rows:
                assert w[-1] < 0.01
        assert total.min() > 0
        if all(c - a >= WINDOW_ROWS for a, c in zip(starts, starts[2:])):  # at most two windows per row
            torch.testing.assert_close(total, torch.ones_like(total))  # a plain linear cross-fade


def test_overlap_long_audio_has_reference_shape_and_keeps_single_window_rows(long_reference, long_overlap):
    assert long_overlap.shape == long_reference.shape
    # Rows only the first window covers are the reference's first window (the same unpadded 30 s of mel).
    first_overlap = overlap_window_starts(long_overlap.shape[0])[1]
    torch.testing.assert_close(long_overlap[:first_overlap], long_reference[:first_overlap], rtol=0, atol=0)


def boundary_jump(hidden: torch.Tensor, row: int, context: int = 50) -> float:
    """Step |h[row+1] - h[row]| over the median step of the `context` steps on either side."""
    steps = (hidden[1:] - hidden[:-1]).double().flatten(1).norm(dim=1)  # (N50 - 1,)
    around = torch.cat([steps[row - context : row], steps[row + 1 : row + 1 + context]])
    return float(steps[row] / around.median())


def test_overlap_removes_the_30_s_jump(long_reference, long_overlap):
    # With a stationary input the step between neighbouring rows is about constant, except where the
    # reference jumps from row 1499 of one window (late position, one-sided context) to row 0 of the next.
    for boundary in (WINDOW_ROWS - 1, 2 * WINDOW_ROWS - 1):
        assert boundary_jump(long_reference, boundary) > 2.5
        assert boundary_jump(long_overlap, boundary) < 1.3


# ---- cache -----------------------------------------------------------------------------------------------


def test_cache_by_content_not_name(tmp_path, checkpoint):
    cache = tmp_path / "cache"
    samples = tone_with_noise(SHORT_S, seed=2)
    a = write_wav(tmp_path / "a.wav", samples)
    b = write_wav(tmp_path / "copy of a.wav", samples)
    enc = WhisperAudioEncoder(checkpoint, cache_dir=cache)

    first = enc.hidden_states(a)
    assert enc.encoder_calls == 1
    again = enc.hidden_states(b)
    frames = enc.frame_embeddings(b)
    assert enc.encoder_calls == 1
    assert torch.equal(first, again)
    assert torch.equal(frames, frame_embeddings_from_hidden(first))

    # A new encoder (a new process, say) over the same weights finds the entry too.
    other = WhisperAudioEncoder(checkpoint, cache_dir=cache)
    assert torch.equal(other.hidden_states(a), first) and other.encoder_calls == 0

    # Up to 30 s both window modes are the same single window: one entry serves both.
    assert torch.equal(enc.hidden_states(a, window="reference"), first)
    assert enc.encoder_calls == 1
    # Longer audio: the modes differ, so each has its own entry.
    long = tone_with_noise(35.0, seed=4)
    enc.hidden_states(long, window="overlap")
    calls = enc.encoder_calls
    enc.hidden_states(long, window="reference")
    assert enc.encoder_calls > calls
    entries = sorted(cache.iterdir())
    assert len(entries) == 3 and all(p.suffix == ".safetensors" for p in entries)  # no temp files left

    # Other weights are another entry.
    reseeded = write_whisper_checkpoint(tmp_path / "seed1.pt", seed=1)
    enc1 = WhisperAudioEncoder(reseeded, cache_dir=cache)
    assert not torch.equal(enc1.hidden_states(a), first) and enc1.encoder_calls == 1


def test_corrupt_cache_entry_is_recomputed(tmp_path, checkpoint):
    cache = tmp_path / "cache"
    samples = tone_with_noise(SHORT_S, seed=3)
    enc = WhisperAudioEncoder(checkpoint, cache_dir=cache)
    first = enc.hidden_states(samples)
    (entry,) = cache.iterdir()
    entry.write_bytes(b"not a safetensors file")
    again = enc.hidden_states(samples)
    assert enc.encoder_calls == 2
    assert torch.equal(first, again)
    assert torch.equal(load_file(str(entry))["hidden_states"], first)  # rewritten
    assert [p.name for p in cache.iterdir()] == [entry.name]


def test_cache_location_and_disabling(tmp_path, monkeypatch, checkpoint):
    monkeypatch.setenv("LATENTSYNC_CACHE_DIR", str(tmp_path / "root"))
    assert default_cache_dir() == tmp_path / "root" / "audio_embeds"
    samples = tone_with_noise(SHORT_S, seed=4)

    WhisperAudioEncoder(checkpoint, cache_dir=False).hidden_states(samples)
    assert not (tmp_path / "root").exists()

    WhisperAudioEncoder(checkpoint).hidden_states(samples)
    assert len(list((tmp_path / "root" / "audio_embeds").glob("*.safetensors"))) == 1


def test_input_checks(encoder):
    with pytest.raises(InputError, match="too short"):
        encoder.hidden_states(np.zeros(100, dtype=np.float32))
    with pytest.raises(ValueError, match="window"):
        encoder.hidden_states(np.zeros(16000, dtype=np.float32), window="sliding")
    with pytest.raises(ValueError, match="1-D"):
        encoder.hidden_states(np.zeros((2, 16000), dtype=np.float32))


# ---- SyncNet mel -----------------------------------------------------------------------------------------


def test_syncnet_mel_shape_range_and_silence():
    n = SAMPLE_RATE_HZ + 123
    mel = syncnet_mel(tone_with_noise(n / SAMPLE_RATE_HZ))
    assert mel.shape == (80, 1 + n // 200) and mel.dtype == np.float32
    assert mel.min() >= -4 and mel.max() <= 4 and mel.max() > 0
    silence = syncnet_mel(np.zeros(n, dtype=np.float32))
    assert np.all(silence == -4)


@pytest.mark.parametrize("freq_hz", [300.0, 1000.0, 4000.0])
def test_syncnet_mel_tone_peaks_in_its_band(freq_hz):
    import librosa

    t = np.arange(SAMPLE_RATE_HZ) / SAMPLE_RATE_HZ
    mel = syncnet_mel((0.5 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32))
    centres = librosa.mel_frequencies(n_mels=80 + 2, fmin=55, fmax=7600)[1:-1]  # band centres
    band = int(np.argmax(mel[:, 10:-10].mean(axis=1)))
    assert abs(band - int(np.argmin(np.abs(centres - freq_hz)))) <= 1


def test_mel_window_lengths_and_start():
    mel = np.tile(np.arange(400, dtype=np.float32), (80, 1))  # value = mel frame index
    w16 = mel_window(mel, start_frame=7)
    assert w16.shape == (80, 52) and w16[0, 0] == int(80 * 7 / 25)
    w25 = mel_window(mel, start_frame=10, num_frames=25)
    assert w25.shape == (80, 80) and w25[0, 0] == 32
    with pytest.raises(ValueError, match="mel"):
        mel_window(mel, start_frame=110)  # 352 + 52 > 400


# ---- regression ------------------------------------------------------------------------------------------


def test_frame_embeddings_are_pinned_in_both_window_modes(encoder):
    """Seeded regression (values produced once by this implementation after the checks above passed): a
    seeded small Whisper on 65 s of seeded audio. Frame 0 lies in the first window in both modes; frames 700
    and 760 straddle the 30 s boundary, where the modes differ."""
    samples = tone_with_noise(LONG_S, seed=5)
    expected = {
        "reference": [-0.1977, 0.6940, 0.6697, -1.0939],
        "overlap": [-0.1977, 0.5784, -0.3309, -0.4963],
    }
    for mode, values in expected.items():
        frames = encoder.frame_embeddings(samples, window=mode)
        assert frames.shape == (1627, 30, 64) and frames.dtype == torch.float32
        torch.testing.assert_close(frames[[0, 700, 760, 1600], 7, 3], torch.tensor(values), atol=2e-4, rtol=1e-3)


def test_syncnet_mel_cache_is_by_content(tmp_path, monkeypatch):
    import latentsync.audio as audio_module
    from latentsync.audio import SyncNetMelCache, syncnet_mel
    from latentsync.media import decode_audio

    samples = tone_with_noise(2.0, seed=9)
    a = write_wav(tmp_path / "a.wav", samples)
    b = write_wav(tmp_path / "copy of a.wav", samples)
    cache = SyncNetMelCache(tmp_path / "cache")
    first = cache.get(a)
    np.testing.assert_array_equal(first, syncnet_mel(decode_audio(a)))  # the file's 16-bit samples
    calls = []
    monkeypatch.setattr(audio_module, "syncnet_mel", lambda x: calls.append(1) or syncnet_mel(x))
    np.testing.assert_array_equal(SyncNetMelCache(tmp_path / "cache").get(b), first)  # another file, process
    assert calls == []  # read from the cache, not computed
    (entry,) = (tmp_path / "cache").iterdir()
    entry.write_bytes(b"broken")
    np.testing.assert_array_equal(SyncNetMelCache(tmp_path / "cache").get(a), first)
    assert calls == [1]  # an unreadable entry is recomputed



def test_the_feature_cache_keys_by_version_settings_and_content(tmp_path, monkeypatch):
    """The one cache under both features: the format version and the settings are in the key, an entry of
    another shape is recomputed and replaced, `folder=None` stores nothing; the mel's folder is unchanged."""
    from safetensors import safe_open

    from latentsync.audio import FeatureCache, SyncNetMelCache

    monkeypatch.setenv("LATENTSYNC_CACHE_DIR", str(tmp_path / "root"))
    assert SyncNetMelCache().cache_dir == tmp_path / "root" / "syncnet_mel"
    data = np.arange(8, dtype=np.float32)
    v1, v2 = FeatureCache(tmp_path / "c", "test.v1", "x"), FeatureCache(tmp_path / "c", "test.v2", "x")
    assert len({v1.key("a", data=data), v2.key("a", data=data), v1.key("b", data=data), v1.key(data=data)}) == 4
    calls = []
    key = v1.key("a", data=data)
    first = v1.get(key, lambda: calls.append(1) or torch.ones(2, 3), (2, 3), note="n")
    assert torch.equal(v1.get(key, lambda: calls.append(1) or torch.zeros(2, 3), (2, 3)), first) and calls == [1]
    (entry,) = (tmp_path / "c").iterdir()
    with safe_open(str(entry), "pt") as f:
        assert f.metadata() == {"format": "test.v1", "note": "n"}
    assert v1.get(key, lambda: torch.zeros(4), (4,)).shape == (4,)  # misshapen for this call: recomputed
    assert load_file(str(entry))["x"].shape == (4,)
    off = FeatureCache(None, "test.v1", "x")
    assert off.get(key, lambda: calls.append(1) or torch.ones(1)).shape == (1,) and calls == [1, 1]
    assert [p.name for p in (tmp_path / "c").iterdir()] == [entry.name]

def test_the_explicit_attention_is_whispers_own_and_switches_nothing_shared(tmp_path):
    """Our encoder runs Whisper's non-SDPA attention on its own modules: the same numbers as Whisper's
    `disable_sdpa()`, while the class-level switch that other Whisper models read stays as it was."""
    import whisper.model

    from latentsync.audio import WhisperAudioEncoder

    encoder = WhisperAudioEncoder(write_whisper_checkpoint(tmp_path / "small.pt"), cache_dir=False)
    reference = whisper.model.AudioEncoder(*(getattr(encoder.dims, k) for k in (
        "n_mels", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer")))
    reference.load_state_dict(encoder.encoder.state_dict())
    switch = []
    hook = encoder.encoder.blocks[0].register_forward_pre_hook(
        lambda *_: switch.append(whisper.model.MultiHeadAttention.use_sdpa))
    mel = torch.randn(1, encoder.dims.n_mels, 3000)
    with torch.inference_mode():
        ours = encoder.encoder(mel)
        with whisper.model.disable_sdpa():
            theirs = reference(mel)
        fused = reference(mel)
    hook.remove()
    assert switch == [True]  # nothing shared was switched while ours ran
    assert torch.equal(ours, theirs)
    assert whisper.model.MultiHeadAttention.use_sdpa is True and fused.shape == ours.shape


# ---- the inference loader --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, expected", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_the_inference_loader_runs_whisper_in_the_jobs_dtype(checkpoints, dtype, expected):
    """`LipSync(dtype=...)` reaches the Whisper encoder: its compute dtype (what the mel is fed in) is the job's,
    not the encoder's own default (float32 on the CPU, float16 on CUDA); the weights stay float32."""
    from latentsync.demo import UNET_CONFIG_NAME
    from latentsync.inference import LipSync

    lipsync = LipSync(checkpoints, unet_config=checkpoints / UNET_CONFIG_NAME, device="cpu", dtype=dtype,
                      audio_cache=False)
    encoder = lipsync.audio_encoder
    assert lipsync.dtype == encoder.dtype == expected
    fed = []
    hook = encoder.encoder.conv1.register_forward_pre_hook(lambda module, args: fed.append(args[0].dtype))
    try:
        hidden = encoder.hidden_states(tone_with_noise(1.0))
    finally:
        hook.remove()
    assert fed == [expected] and hidden.dtype == torch.float32
    assert next(encoder.encoder.parameters()).dtype == torch.float32
