"""pykv-registrar: publish the Docker containers of a host into any pykv store.

Runs once per Docker host (as a sidecar container with the Docker socket mounted, or as a
process). It follows the engine's container events and publishes every container endpoint with
the layout of :mod:`pykv.discovery`, as TTL entries kept alive while it runs, so that the
endpoints of a dead host or a killed registrar vanish by themselves. See :mod:`.model` for the
service model (registrator's conventions), :mod:`.desired` for the desired state of a host,
:mod:`.core` for how events, reconnects and reconciliation work (with :mod:`.source`, the
Docker side, and :mod:`.publisher`, the store side), :mod:`.settings` for the flags and their
``PYKV_REGISTRAR_*`` variables.

Needs the ``registrar`` extra: ``pip install 'pykvstore[registrar]'``. The model and the settings
import without it; :class:`Registrar` is imported on first use, so that a missing extra is
reported as such (:func:`missing_dependencies`) instead of as a bare ModuleNotFoundError.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from .model import ModelSettings, container_endpoints, evaluate
from .settings import Settings, parse_settings

if TYPE_CHECKING:
    from .core import Registrar

__all__ = [
    "DEPENDENCIES",
    "ModelSettings",
    "Registrar",
    "Settings",
    "container_endpoints",
    "evaluate",
    "missing_dependencies",
    "parse_settings",
]

#: The registrar extra's modules (import name -> distribution).
DEPENDENCIES = {
    "docker": "docker",
    "tenacity": "tenacity",
    "prometheus_client": "prometheus-client",
}


def missing_dependencies() -> list[str]:
    """The distributions of the ``registrar`` extra that cannot be imported here."""
    missing = []
    for module, dist in DEPENDENCIES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a module set to None in sys.modules
            found = False
        if not found:
            missing.append(dist)
    return missing


def __getattr__(name: str) -> Any:
    if name == "Registrar":
        from .core import Registrar

        return Registrar
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
