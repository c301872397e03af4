"""Config files: every packaged config loads, values get their annotated types, typos are errors."""

from __future__ import annotations

import pytest

from latentsync.config import (
    CONFIG_ROOT,
    load_syncnet_config,
    load_unet_config,
    resolve_config,
    to_dict,
)
from latentsync.errors import ConfigError


@pytest.mark.parametrize("path", sorted(CONFIG_ROOT.glob("unet/*.yaml")) + [CONFIG_ROOT / "tiny" / "unet.yaml"],
                         ids=lambda p: p.stem)
def test_unet_configs_load_with_typed_values(path):
    cfg = load_unet_config(path)
    assert cfg.model.norm_eps == 1e-5 and isinstance(cfg.model.norm_eps, float)  # "1e-5" is a string to PyYAML
    assert isinstance(cfg.optimizer.lr, float) and cfg.optimizer.lr == 1e-5
    assert cfg.model.in_channels == 13 and cfg.model.cross_attention_dim == 384
    assert cfg.data.num_frames == 16


def test_stage_differences_are_as_published():
    s1, s2, s2_512, eff = (load_unet_config(n) for n in ("stage1", "stage2", "stage2_512", "stage2_efficient"))
    assert not s1.model.use_motion_module and s2.model.use_motion_module
    assert s2.model == s2_512.model and (s2.data.resolution, s2_512.data.resolution) == (256, 512)
    assert eff.model.motion_module_decoder_only and eff.run.trepa_loss_weight == 0
    assert s2.run.trainable_modules == ("motion_modules.", "attentions.")
    assert eff.run.trainable_modules == ("motion_modules.", "attn2.")


@pytest.mark.parametrize("name", ["syncnet_16_pixel_attn", "syncnet_16_pixel", "syncnet_16_latent",
                                  "syncnet_25_pixel", "tiny/syncnet"])
def test_syncnet_configs_load(name):
    cfg = load_syncnet_config(name)
    assert len(cfg.model.audio_encoder.block_out_channels) == len(cfg.model.audio_encoder.downsample_factors)
    if name == "syncnet_25_pixel":
        assert cfg.model.audio_encoder.attn_blocks is None  # the published file has no such key
    if name == "syncnet_16_pixel_attn":
        assert cfg.model.audio_encoder.downsample_factors[0] == (2, 1)
        assert cfg.model.audio_encoder.downsample_factors[1] == 2


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("model:\n  in_chanels: 13\n")
    with pytest.raises(ConfigError, match=r"typo.yaml.model: unknown key\(s\) in_chanels"):
        load_unet_config(path)


@pytest.mark.parametrize("text, message", [
    ("model:\n  layers_per_block: two\n", "expected an integer"),
    ("model:\n  use_motion_module: 1\n", "expected true or false"),
    ("model:\n  block_out_channels: 320\n", "expected a list"),
    ("model:\n  down_block_types: [Foo, DownBlock3D, DownBlock3D, DownBlock3D]\n", "unsupported block type"),
    ("- just\n- a list\n", "mapping at the top level"),
    ("model: [unclosed\n", "not valid YAML"),
])
def test_bad_values_are_one_line_config_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_unet_config(path)
    assert "\n" not in str(err.value)


def test_overrides_and_round_trip():
    cfg = load_unet_config("stage2", overrides=["run.seed=7", "data.resolution=512", "optimizer.lr=3e-5"])
    assert (cfg.run.seed, cfg.data.resolution, cfg.optimizer.lr) == (7, 512, 3e-5)
    assert load_unet_config(to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="expected key=value"):
        load_unet_config("stage2", overrides=["run.seed"])


def test_resolve_by_name_and_errors(tmp_path):
    assert resolve_config("unet", "stage2_512") == CONFIG_ROOT / "unet" / "stage2_512.yaml"
    assert resolve_config("syncnet", "tiny/syncnet") == CONFIG_ROOT / "tiny" / "syncnet.yaml"
    with pytest.raises(ConfigError, match="no such unet config.*stage2_512"):
        resolve_config("unet", "stage3")
    with pytest.raises(ConfigError, match="config file not found"):
        load_unet_config(tmp_path / "absent.yaml")


def test_overrides_apply_to_a_config_instance_without_changing_it():
    base = load_unet_config("stage2")
    changed = load_unet_config(base, overrides=["run.seed=3"])
    assert changed.run.seed == 3 and base.run.seed == 1247
    assert load_unet_config(base) is base
