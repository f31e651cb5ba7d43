"""Loading a trained run for the plugin's commands, with one clear error for each way it can be broken.

nerfstudio's ``eval_setup`` reports a config that is not YAML with a traceback from deep inside yaml;
the check here runs first and names the file and the problem.
"""

from __future__ import annotations

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


def load_trained_pipeline(
    config_path: Path, test_mode: Literal["test", "val", "inference"] = "inference"
) -> Tuple[Pipeline, Path]:
    """The run's pipeline with its latest checkpoint loaded, and that checkpoint's path (a checkpoint
    torch cannot read is reported by the plugin's exception hook, for nerfstudio's commands too)."""
    checked_config(config_path)
    _, pipeline, checkpoint, _ = eval_setup(config_path, test_mode=test_mode)
    return pipeline, checkpoint
