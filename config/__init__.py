"""Settings for kie-covers, read once from the environment.

`get_settings()` is the one way to read them; `config.keys` names every Redis key.
"""

from kie_covers.config.settings import Secret, Settings, SettingsError, get_settings, load_settings

__all__ = ["Secret", "Settings", "SettingsError", "get_settings", "load_settings"]
