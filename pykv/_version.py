"""The version of pykv: the one place it is written.

Every distribution (the core ``pykvstore`` and each ``pykvstore-<backend>``) reads it at build
time through hatch's version source, so they are always released together, at one version.
"""

__version__ = "0.1.0"
