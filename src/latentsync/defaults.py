"""The rates and defaults that several parts of latentsync share, stated once.

Importing this module loads nothing else, so the command line can build its `--help` from these values without
loading PyTorch, OpenCV or PyAV.
"""

from __future__ import annotations

# Rates.
FPS = 25.0  # LatentSync works at 25 video frames per second (Whisper tokens are 50 Hz: two per frame)
SAMPLE_RATE_HZ = 16_000  # Whisper (whisper.audio.SAMPLE_RATE) and the SyncNet mel both work at 16 kHz

# Sampling (the published inference settings).
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 1.5
DEFAULT_SEED = 1247

# Encoding. libx264's constant rate factor 18 is visually lossless for most content (and the reference's). At
# CRF 18 the quality is set by the CRF, not the preset: on a 1080p talking head `veryfast` measured 28.7 frames/s
# and 42.8 dB PSNR against `medium`'s 10.7 frames/s and 43.2 dB (2 CPU cores), with no larger files. Encoding is
# the slowest CPU stage of inference, so the fast preset is the default.
DEFAULT_CRF = 18
DEFAULT_PRESET = "veryfast"
MAX_CRF = 51  # libx264's CRF runs from 0 (lossless) to 51 (worst)
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")

# Length, when the video and the audio differ. A shorter video is looped: "pingpong" plays it forward, backward,
# forward, ... (the reference), "repeat" from the start again, "freeze" holds its last frame. A longer video is
# cut to the audio ("audio", the reference), or kept whole with the speech padded by silence ("video").
LOOP_MODES = ("pingpong", "repeat", "freeze")
TRIM_MODES = ("audio", "video")

# Faces.
MIN_FACE_SCORE = 0.5  # the reference's least detection score (InsightFace's det_thresh, its face filter)
# The face detector runs on every N-th frame, the landmark model follows the face in between
# (`FaceTracker(detect_every=N)`; for mediapipe the face mesh on a crop). det_10g is SCRFD-10GF (10 GFLOPs at
# VGA, SCRFD paper) on a 512 px input, 2d106det a MobileNet-0.5 on a 192 px crop (insightface
# alignment/coordinate_reg): about 40x fewer operations, so detection is nearly all of the face stage's cost,
# and with pip's CPU-only onnxruntime that stage runs on the CPU. Every 5th frame cuts it about 5x. The box the
# landmarks see is the last detection's box moved with the face (2d106det takes "loose cropped" detection
# boxes), anchored to that detection so it does not drift; a lost track or a scene cut is detected again at
# once, a new face entering the shot within 4 frames, 160 ms. 1 reproduces the reference's per-frame detection.
DEFAULT_DETECT_EVERY = 5

# The web app.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860

# Fine-tuning (`latentsync finetune`). A LoRA adapter of rank 16 on the attention and feed-forward projections
# (the common choice for diffusion UNets: a few tens of millions of parameters at most); 3000 steps of batch 1
# is about 48k 16-frame windows, a starting point to watch on the validation clip, not a law.
LORA_RANK = 16
FINETUNE_STEPS = 3000
