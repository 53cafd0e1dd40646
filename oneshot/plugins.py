"""Third-party spaces, tasks and strategies: a pip-installed package adds its own through the entry-point group
``oneshot.plugins``. Each entry point names a module (or a callable); loading it runs its ``register`` calls.

    [project.entry-points."oneshot.plugins"]
    my_nas = "my_nas.oneshot_plugin"
"""

from __future__ import annotations

from importlib.metadata import entry_points

from .errors import UserError

GROUP = "oneshot.plugins"
_loaded = False


def load() -> None:
    """Import every registered plugin once (later calls do nothing)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for ep in entry_points(group=GROUP):
        try:
            obj = ep.load()
            if callable(obj):
                obj()
        except Exception as e:  # a broken third-party package must name itself, not crash with a traceback
            raise UserError(f"the oneshot plugin {ep.name!r} ({ep.value}) failed to load: {type(e).__name__}: {e}; "
                            "fix or uninstall that package") from e
