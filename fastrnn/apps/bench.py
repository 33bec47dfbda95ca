"""``fastrnn bench``: a thin alias of ``python -m bench``, the harness in ``bench/`` of a source checkout.

The harness is not installed with the package. This module finds it beside the package it was imported from
(an editable install or the source tree) and re-exports its command line; elsewhere importing it raises
ImportError, which ``fastrnn bench`` reports as one line.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[2]


def _harness():
    """The checkout's ``bench`` package (imported by location, so no other ``bench`` on sys.path can shadow it)."""
    loaded = sys.modules.get("bench")
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve().parent == _CHECKOUT / "bench":
        return loaded
    init = _CHECKOUT / "bench" / "__init__.py"
    if not init.is_file():
        raise ImportError("the benchmark harness lives in bench/ of a fastrnn source checkout, and this install "
                          "has none: clone the repository and run python -m bench from its root")
    spec = importlib.util.spec_from_file_location("bench", init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module
    spec.loader.exec_module(module)
    return module


_harness()
from bench.cli import add_arguments, main  # noqa: E402

__all__ = ["add_arguments", "main"]
