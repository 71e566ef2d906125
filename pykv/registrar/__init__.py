"""pykv-registrar: publish the Docker containers of a host into any pykv store.

Runs once per Docker host (as a sidecar container with the Docker socket mounted, or as a
process). It follows the engine's container events and publishes every container endpoint with
the layout of :mod:`pykv.discovery`, as TTL entries kept alive while it runs, so that the
endpoints of a dead host or a killed registrar vanish by themselves. See :mod:`.model` for the
service model (registrator's conventions), :mod:`.core` for how events, reconnects and
reconciliation work, :mod:`.settings` for the flags and their ``PYKV_REGISTRAR_*`` variables.

Needs the ``registrar`` extra: ``pip install 'pykvstore[registrar]'``.
"""

from __future__ import annotations

from .core import Registrar
from .model import ModelSettings, container_endpoints
from .settings import Settings, parse_settings

__all__ = ["ModelSettings", "Registrar", "Settings", "container_endpoints", "parse_settings"]
