"""zstd decompression, loaded only when a compressed payload is met.

Python 3.14 has :mod:`compression.zstd`; before that the ``backports.zstd``
package (a dependency of the ``audit`` extra) provides the same API. Neither is
imported on the plugin's runtime path, nor by the audit until a compressed
event or archive turns up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_decompress: Callable[[bytes], bytes] | None = None


class ZstdUnavailable(RuntimeError):
    """No zstd implementation is installed."""


def _load() -> Callable[[bytes], bytes]:
    global _decompress
    if _decompress is None:
        mod: Any
        try:
            import compression.zstd as mod  # type: ignore[import-not-found, no-redef, unused-ignore]
        except ImportError:
            try:
                from backports import zstd as mod  # type: ignore[no-redef, unused-ignore]
            except ImportError as exc:
                raise ZstdUnavailable(
                    "reading zstd-compressed transcripts needs Python 3.14+ or the "
                    "'backports.zstd' package: pip install 'token-optimizer[audit]'") from exc
        _decompress = mod.decompress
    return _decompress


def decompress(data: bytes) -> bytes:
    """Decompress one (or several concatenated) zstd frames."""
    return _load()(data)
