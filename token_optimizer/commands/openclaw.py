"""``token-optimizer openclaw install|doctor|path``: put the OpenClaw plugin in place and check it."""

from __future__ import annotations

from typing import Any

from token_optimizer.hosts.openclaw_install import cmd_doctor, cmd_install, cmd_path, default_dest


def register_cli(subparsers: Any) -> None:
    p = subparsers.add_parser("openclaw", help="install and check the OpenClaw plugin")
    sub = p.add_subparsers(dest="openclaw_command", metavar="ACTION")
    p.set_defaults(func=lambda _a: (p.print_help(), 2)[1])

    ins = sub.add_parser("install", help="register the installed plugin files with OpenClaw")
    ins.add_argument("--link", action="store_true",
                     help="use the installed package's own plugin files in place (the default)")
    ins.add_argument("--copy", action="store_true",
                     help="copy the plugin files instead (a copy goes stale on upgrade: "
                          "run install again after upgrading)")
    ins.add_argument("--dest", help=f"with --copy: copy them here (default: {default_dest()})")
    ins.add_argument("--run", action="store_true", help="run the openclaw commands instead of printing them")
    ins.add_argument("--python", help="Python interpreter for the worker (default: this one)")
    ins.add_argument("--openclaw", help="openclaw command (default: $OPENCLAW_BIN or `openclaw` on PATH)")
    ins.set_defaults(func=cmd_install)

    doc = sub.add_parser("doctor", help="check manifests, OpenClaw config, Python and the worker")
    doc.add_argument("--json", action="store_true", help="machine-readable output")
    doc.add_argument("--python", help="check this interpreter instead of the configured one")
    doc.add_argument("--plugin-dir", help="check this plugin directory")
    doc.set_defaults(func=cmd_doctor)

    pth = sub.add_parser("path", help="print the shipped plugin directory")
    pth.set_defaults(func=cmd_path)
