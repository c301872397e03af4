"""The one rule for device, dtype and mixed precision (`latentsync.devices`): devices that are not there named in
one line, the compute dtype of "auto" per device, the trainers' autocast dtype and scaler, the frozen networks'
dtype, and the former import paths giving the same objects. CUDA and MPS are simulated where the rule only reads
what torch reports, so every case runs on a CPU."""

from __future__ import annotations

import pytest
import torch

from latentsync import devices
from latentsync.devices import (
    DeviceError,
    Precision,
    available_devices,
    resolve_device,
    resolve_dtype,
    resolve_precision,
)
from latentsync.errors import ConfigError, LatentSyncError

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


@pytest.fixture
def no_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)


@pytest.fixture
def mps_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: True)


# ---- device -----------------------------------------------------------------------------------------------


def test_none_is_the_cpu_and_auto_prefers_cuda_then_mps(no_accelerator, monkeypatch):
    assert resolve_device(None) == CPU and resolve_device("cpu") == CPU and resolve_device(CPU) == CPU
    assert resolve_device("auto") == CPU
    monkeypatch.setattr(devices, "_mps_available", lambda: True)
    assert resolve_device("auto") == MPS
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == CUDA


def test_cuda_devices_by_index(two_gpus):
    assert available_devices() == ["cpu", "cuda:0", "cuda:1"]
    assert resolve_device("cuda") == CUDA and resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cuda", 0)) == torch.device("cuda", 0)
    with pytest.raises(DeviceError) as err:
        resolve_device("cuda:2")
    message = str(err.value)
    assert "\n" not in message and "'cuda:2' is not available" in message and "2 CUDA device(s)" in message
    assert "available here: cpu, cuda:0, cuda:1" in message


def test_devices_that_are_not_there_are_named_in_one_line(no_accelerator):
    assert available_devices() == ["cpu"]
    for name, expected in (("cuda", "'cuda' is not available (this PyTorch sees 0 CUDA device(s))"),
                           ("cuda:1", "'cuda:1' is not available"), ("mps", "'mps' is not available"),
                           ("gpu", "unknown device 'gpu'")):
        with pytest.raises(DeviceError) as err:
            resolve_device(name)
        message = str(err.value)
        assert "\n" not in message and expected in message and message.endswith("available here: cpu"), message
    assert issubclass(DeviceError, LatentSyncError)  # the CLI reports it in one line with its exit code


def test_mps_when_it_is_there(mps_only):
    assert available_devices() == ["cpu", "mps"] and resolve_device("mps") == MPS
    with pytest.raises(DeviceError, match="available here: cpu, mps"):
        resolve_device("cuda")


# ---- inference dtype --------------------------------------------------------------------------------------


@pytest.mark.parametrize("device, expected", [(CUDA, torch.float16), (torch.device("cuda", 1), torch.float16),
                                              (CPU, torch.float32), (MPS, torch.float32)])
def test_auto_dtype_is_float16_on_cuda_only(device, expected):
    assert resolve_dtype("auto", device) == expected and resolve_dtype(None, device) == expected


@pytest.mark.parametrize("name, expected", [
    ("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32),
    ("float16", torch.float16), ("half", torch.float16), ("torch.float16", torch.float16),
    ("bfloat16", torch.bfloat16), ("torch.bfloat16", torch.bfloat16),
    ("float32", torch.float32), ("float", torch.float32),
    (torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32),
])
def test_named_dtypes_whatever_the_device(name, expected):
    for device in (CPU, CUDA, MPS):
        assert resolve_dtype(name, device) == expected


def test_only_the_three_compute_dtypes():
    for bad in ("fp8", "int8", "Float16", ""):
        with pytest.raises(ValueError, match=f"unknown dtype {bad!r}; expected auto, fp16, bf16 or fp32"):
            resolve_dtype(bad, CUDA)
    for bad in (torch.float64, torch.int8, torch.uint8):
        with pytest.raises(ValueError, match="unsupported compute dtype"):
            resolve_dtype(bad, CPU)


def test_the_whisper_encoder_reads_its_dtype_with_the_same_rule(tmp_path):
    pytest.importorskip("whisper")
    from whisper_util import write_whisper_checkpoint

    from latentsync.audio import WhisperAudioEncoder

    checkpoint = write_whisper_checkpoint(tmp_path / "tiny.pt")
    for dtype, expected in ((None, torch.float32), ("auto", torch.float32), ("bf16", torch.bfloat16),
                            ("bfloat16", torch.bfloat16), (torch.float16, torch.float16)):
        encoder = WhisperAudioEncoder(checkpoint, dtype=dtype, cache_dir=False)
        assert encoder.dtype == expected and next(encoder.encoder.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="unsupported compute dtype"):
        WhisperAudioEncoder(checkpoint, dtype=torch.float64, cache_dir=False)


# ---- training precision -----------------------------------------------------------------------------------


@pytest.mark.parametrize("device, name, dtype", [
    (CUDA, "auto", torch.float16), (CUDA, "fp16", torch.float16), (CUDA, "bf16", torch.bfloat16),
    (CPU, "auto", torch.bfloat16), (CPU, "bf16", torch.bfloat16), (MPS, "auto", torch.bfloat16),
])
def test_mixed_precision_dtype_and_scaler(device, name, dtype):
    precision = resolve_precision(device, True, name)
    assert precision == Precision(device.type, dtype)
    assert precision.scaled == (dtype == torch.float16)  # bfloat16 has float32's exponent range: no scaler
    assert str(precision) == str(dtype).removeprefix("torch.")


def test_mixed_precision_off_is_float32_throughout():
    for device in (CUDA, CPU):
        for name in ("auto", "fp16", "bf16"):
            precision = resolve_precision(device, False, name)
            assert precision.dtype is None and not precision.scaled and precision.scaler() is None
            assert str(precision) == "float32" and precision.frozen_dtype == torch.float32
            x = torch.ones(2, 2)
            with precision.autocast():
                assert (x @ x).dtype == torch.float32


def test_bad_mixed_precision_settings_are_config_errors():
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device \\(this run is on cpu\\); use bf16 or auto"):
        resolve_precision(CPU, True, "fp16")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_precision(MPS, True, "fp16")
    for enabled in (True, False):  # a typo is reported even when mixed precision is off
        with pytest.raises(ConfigError, match="run.mixed_precision_dtype: 'fp32' is not one of auto, fp16, bf16"):
            resolve_precision(CUDA, enabled, "fp32")


def test_bfloat16_autocast_on_the_cpu():
    precision = resolve_precision(CPU, True, "bf16")
    assert precision.scaler() is None
    x = torch.ones(2, 2)
    with precision.autocast():
        assert (x @ x).dtype == torch.bfloat16
    assert (x @ x).dtype == torch.float32


@pytest.mark.parametrize("device, enabled, name, frozen", [
    (CUDA, True, "bf16", torch.bfloat16),  # was float16 whatever the precision
    (CUDA, True, "fp16", torch.float16),
    (CUDA, True, "auto", torch.float16),
    (CUDA, False, "auto", torch.float32),  # was float16: float32 frames then met a float16 SyncNet
    (CPU, True, "bf16", torch.float32),
    (CPU, False, "auto", torch.float32),
    (MPS, True, "auto", torch.float32),
])
def test_frozen_networks_follow_the_precision(device, enabled, name, frozen):
    assert resolve_precision(device, enabled, name).frozen_dtype == frozen


# ---- a training rank's device ------------------------------------------------------------------------------


def test_a_training_rank_takes_its_own_gpu_and_never_a_device_that_is_not_there(two_gpus, no_accelerator_later):
    """The trainers' `distributed.rank_device` follows the same rule: "auto" and a bare "cuda" are this rank's
    GPU (cuda:LOCAL_RANK); a GPU that is not there is a DeviceError (it was a crash in `set_device`), and
    "cuda" on a machine without one is a DeviceError too (it silently trained on the CPU)."""
    from latentsync.errors import DeviceError
    from latentsync.training.distributed import rank_device

    assert rank_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert rank_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert rank_device("cuda:0", local_rank=1) == torch.device("cuda", 0)
    assert rank_device("cpu", local_rank=1) == CPU
    with pytest.raises(DeviceError, match="cuda:3"):
        rank_device("cuda", local_rank=3)
    no_accelerator_later()
    assert rank_device("auto") == CPU
    with pytest.raises(DeviceError, match="not available"):
        rank_device("cuda")


@pytest.fixture
def no_accelerator_later(monkeypatch):
    """Call it to take the GPUs away mid-test."""
    def take_away():
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    return take_away


# ---- the former homes -------------------------------------------------------------------------------------


def test_former_import_paths_give_the_same_objects():
    from latentsync import errors, inference
    from latentsync.models import checkpoint
    from latentsync.training import precision

    assert checkpoint.resolve_device is devices.resolve_device
    assert checkpoint.available_devices is devices.available_devices
    assert checkpoint.DeviceError is devices.DeviceError is errors.DeviceError
    assert inference.resolve_dtype is devices.resolve_dtype
    assert precision.Precision is devices.Precision
    assert precision.resolve is devices.resolve_precision
