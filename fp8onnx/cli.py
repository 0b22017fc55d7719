"""What every fp8onnx command line shares: one-line errors with exit 2, and callable modules.

``compile``, ``evaluate`` and ``tune`` are each a CLI module and an API function. The
module's class is swapped for :func:`callable_module`'s, so ``fp8onnx.compile(...)``
calls the API whether the package attribute holds the function or (after ``import
fp8onnx.compile``) the module.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from .errors import Fp8OnnxError, UserError

__all__ = ["Parser", "run_main", "callable_module", "check_positive", "write_text_atomic"]


class Parser(argparse.ArgumentParser):
    """argparse with the project's convention: usage errors are one ``error:`` line, exit 2."""

    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def run_main(parser: argparse.ArgumentParser, run, argv=None) -> int:
    """Parse ``argv``, run ``run(args)``; UserError -> exit 2, anything else -> exit 1.

    Either way one ``error:`` line and no traceback unless ``--debug``.
    """
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except UserError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e}".replace("\n", " "), file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the CLI promises one line, not a traceback
        if debug:
            traceback.print_exc()
        kind = "" if isinstance(e, Fp8OnnxError) else f"{type(e).__name__}: "
        print(f"error: {kind}{e} (rerun with --debug for details and report it)".replace("\n", " "),
              file=sys.stderr)
        return 1


def callable_module(module_name: str, fn) -> None:
    """Make the module ``module_name`` callable, forwarding to ``fn``."""
    module = sys.modules[module_name]

    class _Callable(type(module)):
        __doc__ = module.__doc__

        def __call__(self, *args, **kwargs):
            return fn(*args, **kwargs)

    module.__class__ = _Callable


def check_positive(**flags) -> None:
    """UserError for the first flag given a value below 1 (None means not given)."""
    for flag, value in flags.items():
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} {value}: give a positive number")


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so no partial file is left."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
