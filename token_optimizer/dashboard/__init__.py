"""The offline HTML dashboard (``token-optimizer dashboard``); never imported on a hook's path."""

from token_optimizer.dashboard.build import (
    MAX_SESSION_ROWS,
    build_data,
    default_findings,
    render_html,
    write_dashboard,
)

__all__ = ["MAX_SESSION_ROWS", "build_data", "default_findings", "render_html", "write_dashboard"]
