"""One source of options: ``lowrank train`` flags generated from :class:`TrainConfig`, config files."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from lowrank.train import TrainConfig, load_config_file
from lowrank.train.cli import _train_options, add_commands, config_help


def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lowrank")
    sub = parser.add_subparsers(dest="command")
    add_commands(sub)
    return sub.choices["train"]


def test_every_field_is_a_flag_with_its_docstring_help():
    parser = _train_parser()
    flags = {a.dest: a for a in parser._actions if a.dest not in ("help", "config", "retain_memory")}
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    assert sorted(flags) == sorted(names)
    helps = config_help(TrainConfig)
    for name in names:
        assert helps.get(name), f"TrainConfig's docstring has no line for {name}"
        assert flags[name].help.startswith(helps[name][:20])
    assert "--val-every" in flags["val_every"].option_strings
    assert "--no-report" in flags["report"].option_strings  # booleans: --x / --no-x
    assert flags["amp"].choices == ["auto", "bf16", "fp16", "none"] and flags["dims"].choices == [2, 3]


def test_flags_override_the_config_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "steps: 30\nlr: 1e-3\npatch: 16\nval-every: 5\nclasses: [bg, csf, gm, wm]\nreport: false\n"
    )
    args = _train_parser().parse_args(["--config", str(config), "--steps", "7", "--patch", "8", "8", "8"])
    args.config = str(config)
    cfg = TrainConfig(**_train_options(args))
    assert (cfg.steps, cfg.lr, cfg.patch, cfg.val_every, cfg.report) == (7, 1e-3, (8, 8, 8), 5, False)
    assert cfg.classes == ("bg", "csf", "gm", "wm")
    # JSON too, and a run's own config.json (every field) round-trips
    as_json = tmp_path / "config.json"
    as_json.write_text(cfg.to_json())
    assert TrainConfig(**load_config_file(as_json)) == cfg


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stesp: 3", "unknown option 'stesp'; did you mean 'steps'"),
        ("steps: abc", "steps: expected int, got 'abc'"),
        ("amp: fp8", "amp: 'fp8' is not one of auto, bf16, fp16, none"),
        ("report: 1", "report: expected true/false"),
        ("- steps", "expected a mapping of options"),
        ("steps: [1", "not valid YAML"),
    ],
)
def test_config_file_errors_name_the_key(tmp_path, text, message):
    config = tmp_path / "run.yaml"
    config.write_text(text + "\n")
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config_file(config)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_config_file(tmp_path / "missing.yaml")
