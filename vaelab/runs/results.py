"""Results of `vaelab evaluate`, `gaps` and `diagnose` kept in the run directory.

Each command appends its result to a JSON file of its own in the run directory
(``evaluation.json``, ``gaps.json``, ``diagnose.json``), so `vaelab compare` and `vaelab report`
show them without recomputing. A file holds a list of records, oldest first::

    {"command": "evaluate", "options": {...}, "created": "2026-12-02T18:50:00Z", "result": {...}}

``options`` are the arguments that determine the result (K, split, seed, ...); a new record with
the same options replaces the old one, so re-running a command does not pile up copies.
``result`` is the object the command prints with ``--json``. Non-finite floats are stored as
``null`` so that the files are strict JSON that any reader (a browser included) can parse.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from ..core.errors import RunError
from ..core.files import atomic_write_bytes

RESULT_FILES = {"evaluate": "evaluation.json", "gaps": "gaps.json", "diagnose": "diagnose.json"}


def json_finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_finite(v) for v in value]
    return value


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RunError(f"{path} is not a results file ({err}); move it away and run the command again") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) and "result" in r for r in records):
        raise RunError(f"{path} is not a list of results; move it away and run the command again")
    return records


def save_result(run_dir: str | Path, command: str, options: dict[str, Any], result: dict[str, Any]) -> Path:
    """Adds one result of ``command`` (a key of RESULT_FILES) to the run directory, atomically.

    Args:
        run_dir: the run directory.
        command: "evaluate", "gaps" or "diagnose".
        options: the arguments the result depends on; a stored record with equal options is replaced.
        result: what the command prints with ``--json``.

    Returns:
        The path of the results file.
    """
    if command not in RESULT_FILES:
        raise ValueError(f"command must be one of {', '.join(RESULT_FILES)}, got {command!r}")
    path = Path(run_dir) / RESULT_FILES[command]
    options = json_finite(dict(options))
    records = [r for r in _read(path) if r.get("options") != options]
    records.append({"command": command, "options": options,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "result": json_finite(result)})  # fmt: skip
    atomic_write_bytes(path, (json.dumps(records, indent=1, allow_nan=False) + "\n").encode())
    return path


def load_results(run_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Every stored result of the run: {"evaluate": [record, ...], "gaps": [...], "diagnose": [...]},
    each list oldest first (empty when the command never ran)."""
    return {command: _read(Path(run_dir) / name) for command, name in RESULT_FILES.items()}
