"""Your own methods, models or datasets without editing the package: the config's `plugins` lists
Python files, each imported once before the config is checked (and again in every job's process,
teddy.runner), so what they register (`register_method`, `models.register`, `register_dataset`)
is known to the checks, the DAG and the jobs alike."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

from teddy.errors import TeddyError


def load_plugins(paths) -> list[str]:
    """Import each file of `paths` (relative to the working directory) once per process; returns
    the module names. A missing file or one that fails to import is one line naming it."""
    names = []
    for path in paths or []:
        file = Path(path).expanduser().resolve()
        name = f"teddy_plugin_{file.stem}_{hashlib.sha256(str(file).encode()).hexdigest()[:8]}"
        names.append(name)
        if name in sys.modules:
            continue
        if not file.is_file():
            raise TeddyError(f"config key plugins names {path}, which is not a file")
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except TeddyError:
            del sys.modules[name]
            raise
        except Exception as exc:
            del sys.modules[name]
            raise TeddyError(f"plugin {path} failed to import: {type(exc).__name__}: {exc}") from None
    return names
