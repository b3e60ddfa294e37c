"""The ARI reverse proxy that gates originations from ARI dialers.

A front door like the gate: every call it lets through was decided by the one decider.
"""

from __future__ import annotations

from dialguard.proxy.server import AriProxy, ProxyConfig

__all__ = ["AriProxy", "ProxyConfig"]
