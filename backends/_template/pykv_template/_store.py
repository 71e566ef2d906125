"""The TEMPLATE store. Keep driver methods thin: the semantics live in pykv.Store."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from pykv import (
    Capability,
    KVPair,
    Lock,
    NotSupportedError,
    OperationTimeoutError,
    Store,
    StoreURL,
    TLSOptions,
    UnavailableError,
    Watch,
)


@dataclass(frozen=True)
class TemplateOptions(TLSOptions):
    """Options of template:// stores: TLS and timeout/prefix, plus the backend's own."""

    token: str | None = None


class TemplateStore(Store):
    schemes: ClassVar[tuple[str, ...]] = ("template",)
    # Declare only what passes the conformance suite.
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.KV})
    options_class = TemplateOptions
    distribution: ClassVar[str] = "pykvstore-template"
    ttl_slack: ClassVar[float] = 0.0

    def __init__(self, url: StoreURL, options: TemplateOptions) -> None:  # type: ignore[override]
        super().__init__(url, options)

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Map the client library's exceptions to pykv's: the one place that does it."""
        try:
            yield
        except TimeoutError as exc:
            raise OperationTimeoutError(f"{what} on {self}: timed out") from exc
        except OSError as exc:
            raise UnavailableError(f"{what} on {self}: {exc}") from exc

    def _get(self, key: str) -> KVPair:
        raise NotSupportedError("implement me")

    def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        raise NotSupportedError("implement me")

    def _delete(self, key: str) -> None:
        raise NotSupportedError("implement me")

    def _list(self, prefix: str) -> list[KVPair]:
        raise NotSupportedError("implement me")

    def _delete_tree(self, prefix: str) -> None:
        raise NotSupportedError("implement me")

    def _atomic_put(
        self, key: str, value: bytes, previous: KVPair | None, ttl: float | None
    ) -> KVPair:
        raise NotSupportedError("implement me")

    def _atomic_delete(self, key: str, previous: KVPair) -> None:
        raise NotSupportedError("implement me")

    def _watch(self, key: str) -> Watch[KVPair | None]:
        raise NotSupportedError("implement me")

    def _watch_tree(self, prefix: str) -> Watch[list[KVPair]]:
        raise NotSupportedError("implement me")

    def _lock(self, key: str, value: bytes, ttl: float) -> Lock:
        raise NotSupportedError("implement me")

    def _close(self) -> None:
        pass
