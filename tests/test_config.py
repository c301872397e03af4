"""Config files: every packaged config loads, values get their annotated types, typos are errors."""

from __future__ import annotations

import pytest
import yaml

from latentsync.config import (
    CONFIG_ROOT,
    load_preprocess_config,
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


# The behaviours below are the ones OmegaConf structured configs would change (config/loading.py says how).

def test_nested_overrides_get_the_annotated_types():
    cfg = load_unet_config("tiny/unet", overrides=["model.motion_module_kwargs.num_attention_heads=4",
                                                   "run.trainable_modules=[motion_modules., attn2.]",
                                                   "run.use_mixed_noise=false", "optimizer.lr=1e-4",
                                                   "data.audio_feat_length=[3, 3]"])
    assert cfg.model.motion_module_kwargs.num_attention_heads == 4
    assert cfg.run.trainable_modules == ("motion_modules.", "attn2.")
    assert cfg.run.use_mixed_noise is False and cfg.optimizer.lr == 1e-4
    assert cfg.data.audio_feat_length == (3, 3)
    with pytest.raises(ConfigError, match=r"tiny/unet.yaml.run: unknown key\(s\) sed"):
        load_unet_config("tiny/unet", overrides=["run.sed=7"])
    with pytest.raises(ConfigError, match="run.seed: expected an integer"):
        load_unet_config("tiny/unet", overrides=["run.seed=seven"])


def test_fixed_length_tuple_and_missing_field_errors_name_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  audio_feat_length: [1, 2, 3]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.data.audio_feat_length: expected 2 items"):
        load_unet_config(path)
    with pytest.raises(ConfigError, match="syncnet config.model.audio_encoder: .*block_out_channels") as err:
        load_syncnet_config({"model": {"audio_encoder": {"in_channels": 1}, "visual_encoder": {}}})
    assert "\n" not in str(err.value)


def test_strings_are_taken_literally(tmp_path):
    path = tmp_path / "paths.yaml"
    path.write_text("data:\n  train_data_dir: /data/${USER}/clips\n  mask_image_path: 7\n")
    cfg = load_unet_config(path)
    assert cfg.data.train_data_dir == "/data/${USER}/clips" and cfg.data.mask_image_path == "7"


@pytest.mark.parametrize("kind, name", [("unet", "stage2"), ("syncnet", "syncnet_16_pixel_attn"),
                                        ("syncnet", "tiny/syncnet")])
def test_yaml_written_for_resume_loads_back_equal(tmp_path, kind, name):
    load = load_unet_config if kind == "unet" else load_syncnet_config
    cfg = load(name, overrides=["data.num_workers=1"])
    path = tmp_path / "config.yaml"  # what the trainers write into a run folder
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    again = load(path)
    assert again == cfg
    if kind == "syncnet":  # the (h, w) pairs among the downsample factors stay tuples
        assert again.model.audio_encoder.downsample_factors[0] == (2, 1)


def test_preprocess_config_overrides_and_typos(tmp_path):
    cfg = load_preprocess_config(None, ["sync_conf_threshold=2", "video_extensions=[.mp4]"])
    assert cfg.sync_conf_threshold == 2.0 and isinstance(cfg.sync_conf_threshold, float)
    assert cfg.video_extensions == (".mp4",)
    path = tmp_path / "pre.yaml"
    path.write_text("sync_conf_treshold: 2\n")
    with pytest.raises(ConfigError, match=r"pre.yaml: unknown key\(s\) sync_conf_treshold"):
        load_preprocess_config(path)
    with pytest.raises(ConfigError, match="resolution: 100 is not a positive multiple of 8"):
        load_preprocess_config({"resolution": 100})


def test_overrides_reach_every_kind_of_source_and_leave_the_callers_objects_alone():
    """An instance with overrides is changed as a copy (the data pipeline's loader used to return it as it was,
    dropping the overrides), and a nested mapping the caller passed is not written into."""
    base = load_preprocess_config()
    changed = load_preprocess_config(base, ["sync_conf_threshold=2"])
    assert changed.sync_conf_threshold == 2.0 and base.sync_conf_threshold != 2.0
    assert load_preprocess_config(base) is base
    mapping = to_dict(load_unet_config("tiny/unet"))
    seed = mapping["run"]["seed"]
    assert load_unet_config(mapping, overrides=[f"run.seed={seed + 1}"]).run.seed == seed + 1
    assert mapping["run"]["seed"] == seed
