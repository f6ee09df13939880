"""Config: presets, `section.key=value` overrides with type coercion, validation, TOML round trip."""
from __future__ import annotations

import dataclasses

import pytest

from dtn.config import (PRESETS, Config, apply_overrides, diff_from_default, from_dict, load_toml,
                        parse_set_args, preset, to_dict, to_toml)
from dtn.errors import ConfigError


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_and_validate(name):
    cfg = preset(name)
    assert isinstance(cfg, Config)
    assert cfg.validate() is cfg
    assert cfg.name == name


def test_default_config_is_the_paper():
    cfg = Config().validate()
    assert cfg.loss.alpha == cfg.loss.beta == 15.0 and cfg.loss.gamma == 0.0
    assert cfg.loss.discriminator == "ternary" and cfg.nets.d_classes == 3
    assert cfg.loss.const_distance == "mse" and cfg.loss.gan
    assert cfg.train.f_mode == "pretrained" and not cfg.train.f_trainable
    assert cfg.train.d_steps == cfg.train.g_steps == 1


def test_unknown_preset():
    with pytest.raises(ConfigError, match="tiny"):
        preset("nope")


def test_overrides_coerce_strings():
    cfg = apply_overrides(preset("tiny"), {
        "train.steps": "5", "loss.alpha": "2.5", "loss.gan": "false", "train.f_trainable": "yes",
        "train.channels_last": "0", "loss.const_distance": "cosine", "name": "mine", "optim.lr_g": "1e-3"})
    assert cfg.train.steps == 5 and type(cfg.train.steps) is int
    assert cfg.loss.alpha == 2.5 and type(cfg.loss.alpha) is float
    assert cfg.loss.gan is False and cfg.train.f_trainable is True and cfg.train.channels_last is False
    assert cfg.loss.const_distance == "cosine" and cfg.name == "mine"
    assert cfg.optim.lr_g == pytest.approx(1e-3)


@pytest.mark.parametrize("text,value", [("true", True), ("True", True), ("1", True), ("on", True),
                                        ("false", False), ("FALSE", False), ("0", False), ("off", False),
                                        ("no", False)])
def test_bool_parsing(text, value):
    assert apply_overrides(Config(), {"loss.gan": text}).loss.gan is value


def test_bad_values_raise():
    with pytest.raises(ConfigError, match="train.steps"):
        apply_overrides(Config(), {"train.steps": "five"})
    with pytest.raises(ConfigError, match="loss.gan"):
        apply_overrides(Config(), {"loss.gan": "maybe"})
    with pytest.raises(ConfigError, match="train.steps"):
        apply_overrides(Config(), {"train.steps": True})  # a bool is not an int
    with pytest.raises(ConfigError):
        apply_overrides(Config(), {"train.steps": 2.5})


def test_native_values_accepted():
    cfg = apply_overrides(Config(), {"loss.alpha": 3, "train.steps": 7, "loss.gan": False})
    assert cfg.loss.alpha == 3.0 and type(cfg.loss.alpha) is float
    assert cfg.train.steps == 7 and cfg.loss.gan is False


def test_overrides_do_not_mutate_the_base():
    base = preset("tiny")
    apply_overrides(base, {"train.steps": "99"})
    assert base.train.steps == preset("tiny").train.steps


def test_unknown_section_lists_sections():
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), {"trian.steps": "5"})
    message = str(info.value)
    assert "trian" in message
    for section in ("data", "nets", "loss", "optim", "train", "pretrain"):
        assert section in message


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), {"train.stepz": "5"})
    message = str(info.value)
    assert "train.stepz" in message
    for key in ("steps", "batch_size", "d_steps", "g_steps", "warmup_steps", "f_mode", "precision"):
        assert key in message


def test_key_without_section():
    with pytest.raises(ConfigError, match="section"):
        apply_overrides(Config(), {"steps": "5"})


@pytest.mark.parametrize("key,value", [
    ("loss.const_distance", "l1"), ("loss.code_scale", "max"), ("loss.discriminator", "quaternary"),
    ("optim.optimizer", "rmsprop"), ("optim.schedule", "step"), ("train.f_mode", "frozen"),
    ("train.precision", "fp16"), ("train.batch_size", "0"), ("train.g_steps", "0"), ("train.d_steps", "-1"),
    ("train.steps", "-1"),
])
def test_invalid_enum_values_raise(key, value):
    with pytest.raises(ConfigError):
        apply_overrides(Config(), {key: value})


def test_binary_discriminator_needs_two_classes():
    with pytest.raises(ConfigError, match="d_classes"):
        apply_overrides(Config(), {"loss.discriminator": "binary"})
    cfg = apply_overrides(Config(), {"loss.discriminator": "binary", "nets.d_classes": "2"})
    assert cfg.nets.d_classes == 2


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_toml_round_trip(tmp_path, name):
    cfg = apply_overrides(preset(name), {"loss.gamma": "0.05", "data.memmap": "true", "data.data_dir": "/x y/z",
                                         "name": 'odd "name"'})
    path = tmp_path / "config.toml"
    path.write_text(to_toml(cfg))
    assert load_toml(path) == cfg
    assert to_dict(load_toml(path)) == to_dict(cfg)


def test_toml_round_trip_every_field_differs_from_default(tmp_path):
    """A config where (almost) every field is changed still comes back equal."""
    default = Config()
    changed = {}
    for section in ("data", "loss", "optim", "train", "pretrain", "nets"):
        for f in dataclasses.fields(getattr(default, section)):
            value = getattr(getattr(default, section), f.name)
            if isinstance(value, bool):
                changed[f"{section}.{f.name}"] = not value
            elif isinstance(value, float):
                changed[f"{section}.{f.name}"] = value + 0.125
    changed["loss.const_distance"] = "mse+cosine"
    changed["train.f_mode"] = "joint"
    changed["train.steps"] = 17
    changed["pretrain.f_target_options"] = False    # needs a margin head, which d_conditional refuses
    changed["loss.target_reader"] = 0.0              # needs a pretrained f, and f_mode is joint here
    changed["pretrain.reader_min_confidence"] = 0.5
    changed["loss.target_classes_by_reader"] = False  # needs the reader, which is off here
    changed["nets.g_code_align"] = False              # needs a frozen f, and f_mode is joint here
    cfg = apply_overrides(default, changed)
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    assert load_toml(path) == cfg


def test_load_toml_errors(tmp_path):
    with pytest.raises(ConfigError):
        load_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps = ")
    with pytest.raises(ConfigError):
        load_toml(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[train]\nsteps = 3\nbogus = 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        load_toml(unknown)


def test_from_dict_uses_base():
    cfg = from_dict({"train": {"steps": 3}}, base=preset("tiny"))
    assert cfg.train.steps == 3 and cfg.nets == preset("tiny").nets


def test_parse_set_args():
    assert parse_set_args(["train.steps=5", "name=a=b"]) == {"train.steps": "5", "name": "a=b"}
    with pytest.raises(ConfigError):
        parse_set_args(["train.steps"])


def test_diff_from_default():
    cfg = apply_overrides(Config(), {"train.steps": "5"})
    assert diff_from_default(cfg) == {"train.steps": (5, Config().train.steps)}
    assert diff_from_default(Config()) == {}


def test_digits_is_digits_faithful_plus_its_six_named_deviations():
    """The default digits preset differs from digits-faithful in exactly the deviations its docstring
    names (conditional D, KL L_CONST, augmented L_CONST, g_ema, L_LAYOUT, L_READ with its refined,
    speckle- and warp-taught reader), f's longer pretraining and the longer schedule:
    nothing else drifts, and f, as in the paper, never sees the target (no self-training)."""
    ours, faithful = diff_from_default(preset("digits")), diff_from_default(preset("digits-faithful"))
    changed = {k for k in set(ours) | set(faithful) if ours.get(k) != faithful.get(k)}
    assert changed == {"nets.d_conditional", "loss.const_distance", "loss.const_augment", "train.g_ema",
                       "loss.class_layout", "loss.target_reader", "pretrain.f_steps", "pretrain.reader_refine_steps",
                       "pretrain.reader_augment", "train.steps"}
    assert preset("digits").pretrain.f_self_train == 0
    assert (preset("digits").train.steps, preset("digits-faithful").train.steps) == (1500, 1000)
    assert (ours["loss.const_distance"][0], ours["nets.d_conditional"][0]) == ("kl", True)


@pytest.mark.parametrize("key,value", [("loss.class_layout", "-1"), ("loss.class_layout_grid", "0"),
                                       ("loss.class_layout_grid", "33")])
def test_class_layout_settings_out_of_range_are_refused(key, value):
    with pytest.raises(ConfigError, match="class_layout"):
        apply_overrides(preset("digits"), {key: value}).validate()


@pytest.mark.parametrize("over", [{"loss.target_reader": "-1"}, {"pretrain.reader_steps": "0"},
                                  {"pretrain.reader_min_confidence": "1"}, {"pretrain.reader_min_confidence": "0"},
                                  {"pretrain.reader_refine_steps": "-1"}, {"pretrain.reader_augment": "noise"},
                                  {"pretrain.reader_adversarial": "-0.1"}, {"pretrain.reader_adversarial": "2"},
                                  {"pretrain.reader_class_share": "-0.1"}, {"pretrain.reader_class_share": "1.5"},
                                  {"pretrain.reader_augment": "speckle,speckle"}, {"pretrain.reader_augment": "speckle,"},
                                  {"loss.target_reader": "5", "train.f_mode": "joint"},
                                  {"loss.target_reader": "5", "pretrain.f_head": "cosface",
                                   "nets.d_conditional": "false", "loss.const_distance": "mse"}])
def test_target_reader_settings_that_cannot_work_are_refused(over):
    with pytest.raises(ConfigError, match="target_reader"):
        apply_overrides(preset("digits"), over).validate()


def test_several_reader_augmentations_are_one_reader_each():
    from dtn.config import reader_augments
    cfg = apply_overrides(preset("digits"), {"pretrain.reader_augment": "speckle, elastic"}).validate()
    assert reader_augments(cfg.pretrain.reader_augment) == ["speckle", "elastic"]

