"""The audit half: read the hosts' own stores, normalise them, and report on them.

Nothing on the plugin's hook/runtime path imports this package. Its modules:

* :mod:`.model`: the normalised per-session row (:class:`~.model.SessionRow`)
  that every command and detector consumes.
* :mod:`.openclaw` and :mod:`.hermes`: read-only, WAL-safe, incremental readers
  of OpenClaw 2026.9.x and Hermes 0.19.0 stores.
* :mod:`.money`: host-recorded cost first, then a price table; never a silent $0.
* :mod:`.cache`: the small incremental cache under the state root.
* :mod:`.scan`: host discovery and the one entry point that yields sessions.
"""
