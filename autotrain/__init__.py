"""Overlay onto the installed ``autotrain-advanced`` package.

This folder holds only this project's code (``autotrain.trainers.image_classification_custom``).
Importing ``autotrain`` from here joins the upstream package's folder to ``__path__`` and runs the
upstream ``__init__`` in this module's namespace, so ``from autotrain import logger`` and
``autotrain.trainers.common`` behave exactly as they do without the overlay. Nothing upstream is
copied or modified.
"""

import os
import sys
from pathlib import Path


def join_upstream(module_globals: dict, *parts: str) -> None:
    """Append the installed upstream package folder ``parts`` to ``__path__`` and run its init.

    Args:
        module_globals: ``globals()`` of the overlay package being initialised.
        *parts: the package's path components, e.g. ``("autotrain", "trainers")``.

    Raises:
        ImportError: when autotrain-advanced is not installed beside this overlay.
    """
    here = Path(module_globals["__file__"]).resolve().parent
    for entry in sys.path:
        candidate = Path(entry or os.getcwd()).resolve().joinpath(*parts)
        init = candidate / "__init__.py"
        # skip this folder and any other checkout of this overlay (e.g. a second clone whose .pth is
        # on sys.path too): joining an overlay to an overlay recurses forever
        if candidate != here and init.is_file() and "join_upstream(" not in init.read_text(encoding="utf-8"):
            break
    else:
        raise ImportError(
            f"{'.'.join(parts)}: the installed autotrain-advanced package was not found on sys.path; "
            "run `make install` (it installs autotrain-advanced==0.8.36 with --no-deps)."
        )
    path = module_globals["__path__"]
    if str(candidate) not in path:
        path.append(str(candidate))
    code = compile(init.read_text(encoding="utf-8"), str(init), "exec")
    exec(code, module_globals)  # noqa: S102 - runs upstream's own package init, unchanged


join_upstream(globals(), "autotrain")
