"""`latentsync train` through the command line: each model trains, and the same command continues the run."""

from __future__ import annotations

import json

from test_train_unet import RECON_ONLY, setup  # noqa: F401 - the module fixture: tiny checkpoints and clips

from latentsync import cli
from latentsync.demo import UNET_CONFIG_NAME


def steps_logged(run_dir) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_train_unet_then_continue(setup, tmp_path):  # noqa: F811
    checkpoints, clips, _ = setup
    argv = ["train", "unet", "--config", str(checkpoints / UNET_CONFIG_NAME), *RECON_ONLY,
            "ckpt.save_ckpt_steps=1", "--data", str(clips), "--checkpoints", str(checkpoints),
            "--run-dir", str(tmp_path / "run"), "--device", "cpu", "--quiet"]
    assert cli.main([*argv, "--max-steps", "1"]) == 0
    assert cli.main([*argv, "--max-steps", "2"]) == 0  # --resume auto by default
    assert steps_logged(tmp_path / "run") == [1, 2]
    assert (tmp_path / "run" / "exports" / "unet-00000002.pt").is_file()
    assert cli.main([*argv, "--max-steps", "3", "--resume", "never"]) == 2  # refuses to start over in place


def test_train_syncnet(setup, tmp_path, capsys):  # noqa: F811
    _, clips, _ = setup
    code = cli.main(["train", "syncnet", "--config", "tiny/syncnet", "data.batch_size=2", "data.num_workers=0",
                     "ckpt.save_ckpt_steps=2", "--data", str(clips), "--run-dir", str(tmp_path / "run"),
                     "--max-steps", "2", "--device", "cpu", "--quiet"])
    assert code == 0 and steps_logged(tmp_path / "run") == [1, 2]
    assert (tmp_path / "run" / "exports" / "syncnet-00000002.pt").is_file()


def test_train_without_clips_is_one_line(setup, tmp_path, capsys):  # noqa: F811
    checkpoints, _, _ = setup
    code = cli.main(["train", "unet", "--config", str(checkpoints / UNET_CONFIG_NAME), *RECON_ONLY,
                     "--data", str(tmp_path / "nothing"), "--checkpoints", str(checkpoints),
                     "--run-dir", str(tmp_path / "run"), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "nothing" in err and "\n" not in err
