"""Loading a trained run for the plugin's commands, with one clear error for each way it can be broken.

nerfstudio's ``eval_setup`` reports a config that is not YAML, or a truncated checkpoint, with a
traceback from deep inside yaml or torch. The checks here run first and name the file and the problem.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Literal, Tuple

import yaml
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import Pipeline
from nerfstudio.utils.eval_utils import eval_setup

from nerfqat_plugin.errors import UserInputError


def checked_config(path: Path) -> TrainerConfig:
    """The run's configuration from ``config.yml``, or a :class:`UserInputError` naming what is wrong."""
    if not path.is_file():
        raise UserInputError(f"{path}: config file not found")
    try:
        config = yaml.load(path.read_text(encoding="utf8"), Loader=yaml.Loader)
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserInputError(f"{path}: not a nerfstudio config.yml ({type(err).__name__})") from None
    if not isinstance(config, TrainerConfig):
        raise UserInputError(f"{path}: not a nerfstudio config.yml (it holds no trainer configuration)")
    return config


def latest_checkpoint(config: TrainerConfig) -> Path:
    """The checkpoint ``eval_setup`` would load, checked to be a whole torch archive (a truncated file
    has lost the zip directory at its end)."""
    directory = config.get_checkpoint_dir()
    checkpoints = sorted(directory.glob("step-*.ckpt")) if directory.is_dir() else []
    if not checkpoints:
        raise UserInputError(f"{directory}: no checkpoint (step-*.ckpt) in the run's folder")
    latest = max(checkpoints, key=lambda p: int(p.stem.split("-")[-1]) if p.stem.split("-")[-1].isdigit() else -1)
    try:
        with zipfile.ZipFile(latest):
            pass
    except (zipfile.BadZipFile, OSError) as err:
        raise UserInputError(
            f"{latest}: unreadable checkpoint ({err}); it may be truncated: delete it to use the one before"
        ) from None
    return latest


def load_trained_pipeline(
    config_path: Path, test_mode: Literal["test", "val", "inference"] = "inference"
) -> Tuple[Pipeline, Path]:
    """The run's pipeline with its latest checkpoint loaded, and that checkpoint's path."""
    latest_checkpoint(checked_config(config_path))
    _, pipeline, checkpoint, _ = eval_setup(config_path, test_mode=test_mode)
    return pipeline, checkpoint
