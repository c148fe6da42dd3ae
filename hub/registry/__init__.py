"""Model registry: verified, content-addressed bundle storage plus its database rows."""

from hub.registry.service import ModelRegistry, RegistryError
from hub.registry.store import BundleStore, FilesystemBundleStore

__all__ = ["BundleStore", "FilesystemBundleStore", "ModelRegistry", "RegistryError"]
