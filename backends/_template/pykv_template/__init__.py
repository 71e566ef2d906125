"""``template://`` — replace this docstring: it is the driver's documentation.

URL form
    ``template://host1:port,host2:port/prefix``

Options
    ``timeout`` (seconds, default 10), ``prefix``, and the backend's own (credentials, TLS).

Capabilities
    List them, and say why any is missing.

Tested server versions
    Name them.

TTL slack
    How long after its owner dies a TTL key or a lock may still live, beyond its TTL.
"""

from ._store import TemplateOptions, TemplateStore

__all__ = ["TemplateOptions", "TemplateStore"]
