"""Rewriting a file's container without re-encoding its picture: `shift_audio` moves the sound against it."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..fileio import atomic_write
from .audio import AUDIO_CODEC, AudioFeed
from .streams import audio_stream, open_media, video_stream

SHIFT_FORMAT = "mp4"  # the container `shift_audio` writes, whatever the destination's extension


def shift_audio(src: Path, dst: Path, delay_s: Fraction) -> None:
    """Copy `src` to `dst` with its video packets untouched and its sound delayed by `delay_s` (negative:
    advanced), as the reference's `ffmpeg -itsoffset` does; the sound is re-encoded as AAC at its own rate and
    layout (`AudioFeed`) to the duration it had, silence-padded at the start when delayed.

    `dst` is written under a temporary name and renamed into place. Raises `InputError` (naming `src`) if it
    is not a readable video with sound.
    """
    src, dst = Path(src), Path(dst)
    feed = AudioFeed(src)  # the writer's audio reader: start offsets, silence padding, resampling
    try:
        feed.start_at(-float(delay_s))
        with open_media(src) as source:
            video_in = video_stream(source, src)
            audio_in = audio_stream(source, src)
            duration = float(audio_in.duration * audio_in.time_base) if audio_in.duration else None
            packets = [p for p in source.demux(video_in) if p.dts is not None]
            with atomic_write(dst, suffix=dst.suffix) as tmp, av.open(str(tmp), "w", format=SHIFT_FORMAT) as target:
                video_out = target.add_stream_from_template(video_in)
                audio_out = target.add_stream(AUDIO_CODEC, rate=feed.rate, layout=feed.layout)
                for packet in packets:
                    packet.stream = video_out
                    target.mux(packet)
                if duration is None:
                    duration = float(video_in.duration * video_in.time_base)
                samples = feed.read(int(round(duration * feed.rate)))  # (channels, n)
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=feed.layout)
                frame.sample_rate = feed.rate
                frame.pts = 0
                for p in audio_out.encode(frame):
                    target.mux(p)
                for p in audio_out.encode(None):
                    target.mux(p)
    finally:
        feed.close()
