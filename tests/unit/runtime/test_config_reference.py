"""docs/configuration.md lists every setting of every service as the settings classes define it now."""

from __future__ import annotations

from tools import config_reference


def test_the_configuration_reference_is_up_to_date() -> None:
    current = config_reference.REFERENCE.read_text()
    assert current == config_reference.render(), (
        "run `python -m tools.config_reference` and commit the result"
    )


def test_every_service_setting_appears_in_the_reference() -> None:
    text = config_reference.render()
    for settings_cls in config_reference.SERVICES:
        for name in settings_cls.model_fields:
            specific, shared = settings_cls.variable_names(name)
            assert f"`{specific}`" in text or f"`{shared}`" in text, name


def test_the_generated_setting_names_are_up_to_date_and_hold_every_service_variable() -> None:
    assert config_reference.NAMES_MODULE.read_text() == config_reference.render_names(), (
        "run `python -m tools.config_reference` and commit the result"
    )
    from services.runtime.setting_names import ALL_SETTING_VARIABLES

    for settings_cls in config_reference.SERVICES:
        for name in settings_cls.model_fields:
            assert set(settings_cls.variable_names(name)) <= ALL_SETTING_VARIABLES, name
