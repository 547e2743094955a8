"""The one configuration: YAML round trip, unknown keys and mistyped values are clear errors."""
from __future__ import annotations

import pytest

from pebal_ros.config import Config, from_dict, load_config, save_config


def test_yaml_round_trip(tmp_path):
    cfg = from_dict({"train": {"epochs": 3}, "inference": {"input_size": [128, 256]}})
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg and again.inference.input_size == (128, 256)


def test_yaml_11_exponent_without_dot_is_read_as_a_number(tmp_path):
    # PyYAML reads `1e-3` as the string "1e-3" (YAML 1.1); it must still arrive as a float.
    (tmp_path / "c.yaml").write_text("train:\n  lr: 1e-3\ninference:\n  threshold: -7\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(cfg.train.lr, float)
    assert cfg.inference.threshold == -7.0 and isinstance(cfg.inference.threshold, float)


@pytest.mark.parametrize("data, message", [
    ({"train": {"lr": "fast"}}, "train.lr: expected a number"),
    ({"train": {"epochs": 2.5}}, "train.epochs: expected an integer"),
    ({"anomalymix": {"enabled": "yes"}}, "anomalymix.enabled: expected true/false"),
    ({"trian": {}}, "unknown key"),
    ({"loss": {"m_inn": -12}}, "loss: unknown key"),
])
def test_bad_values_name_the_key(data, message):
    with pytest.raises(ValueError, match=message):
        from_dict(data)


def test_defaults_are_the_official_hyper_parameters():
    cfg = Config()
    assert (cfg.loss.m_in, cfg.loss.m_out, cfg.loss.ebm_weight) == (-12.0, -6.0, 0.1)
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.batch_size) == (1e-5, 40, 8)
