"""Reading and writing media with PyAV (FFmpeg's libraries in-process; no `ffmpeg` binary, no shell).

- `audio`: `decode_audio` turns any file FFmpeg can read (a WAV, an MP3, the sound of an MP4, ...) into mono
  float32 samples at a chosen rate, as the reference's `ffmpeg ... -f s16le` pipe does; `probe_audio`,
  `audio_duration_s`, `write_wav`; `AudioFeed`, the user's track read in order for muxing.
- `probe`: `probe_video`, a video's displayed size, rate, duration, sound and rotation from its header.
- `read`: `VideoReader` streams upright RGB frames at a constant rate through FFmpeg's own `fps` filter and can
  start anywhere by seeking.
- `write`: `VideoWriter` encodes RGB frames to H.264 in one pass, muxes the user's audio (its rate and
  channels, as AAC) and replaces the destination atomically; `check_output_path`.
- `mux`: `shift_audio`, a file's sound moved against its untouched picture.
- `rotation`, `timing`, `streams`: display rotation, exact rates and FFmpeg's rounding, opening files.

Memory does not grow with a video's length. Problems a user can cause (a missing file, a file that is not
media, a video without sound, an empty track, an output folder that cannot be written) raise `InputError` with
one line naming the file or folder. Every name is importable from `latentsync.media` as before the split.
"""

from ..defaults import DEFAULT_CRF, DEFAULT_PRESET, X264_PRESETS
from .audio import (
    AAC_BIT_RATE_PER_CHANNEL_BPS,
    AAC_FALLBACK_LAYOUT,
    AAC_FALLBACK_RATE_HZ,
    AAC_FRAME_SAMPLES,
    AAC_LAYOUTS,
    AUDIO_CODEC,
    DEFAULT_SAMPLE_RATE_HZ,
    S16_BYTES,
    S16_FULL_SCALE,
    S16_MAX,
    AudioFeed,
    audio_duration_s,
    decode_audio,
    probe_audio,
    write_wav,
)
from .mux import shift_audio
from .probe import VideoInfo, probe_video
from .read import SEEK_BACKOFF_S, VideoReader
from .rotation import FULL_TURN_DEG, QUARTER_TURN_DEG, ROTATION_TOLERANCE_DEG, rotate_upright
from .timing import DEFAULT_FPS, FPS_MAX_DENOMINATOR
from .write import (
    CHROMA_SUBSAMPLING,
    CONTAINER_FORMATS,
    FASTSTART_FORMATS,
    PARTIAL_NAME_ATTEMPTS,
    PARTIAL_TOKEN_BYTES,
    VIDEO_CODEC,
    VIDEO_PIX_FMT,
    VideoWriter,
    check_output_path,
)

__all__ = [
    "AAC_BIT_RATE_PER_CHANNEL_BPS", "AAC_FALLBACK_LAYOUT", "AAC_FALLBACK_RATE_HZ", "AAC_FRAME_SAMPLES",
    "AAC_LAYOUTS", "AUDIO_CODEC", "CHROMA_SUBSAMPLING", "CONTAINER_FORMATS", "FASTSTART_FORMATS", "FULL_TURN_DEG",
    "PARTIAL_NAME_ATTEMPTS", "PARTIAL_TOKEN_BYTES", "QUARTER_TURN_DEG", "ROTATION_TOLERANCE_DEG", "DEFAULT_CRF", "DEFAULT_FPS", "DEFAULT_PRESET",
    "DEFAULT_SAMPLE_RATE_HZ", "FPS_MAX_DENOMINATOR", "S16_BYTES", "S16_FULL_SCALE", "S16_MAX", "SEEK_BACKOFF_S",
    "VIDEO_CODEC", "VIDEO_PIX_FMT", "X264_PRESETS", "AudioFeed", "VideoInfo", "VideoReader", "VideoWriter",
    "audio_duration_s", "check_output_path", "decode_audio", "probe_audio", "probe_video", "rotate_upright",
    "shift_audio", "write_wav",
]
