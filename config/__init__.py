"""Settings for kie-covers, read once from the environment.

`get_settings()` is the one way to read them; `kie_covers.config.keys` names every Redis key.
"""

from kie_covers.config.settings import Settings, get_settings, load_settings
from kie_covers.core.errors import SettingsError
from kie_covers.core.secret import Secret

__all__ = ["Secret", "Settings", "SettingsError", "get_settings", "load_settings"]
