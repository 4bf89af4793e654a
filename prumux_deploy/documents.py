"""The files prumux-deploy writes and reads back: versioned JSON documents (checkpoint config.json, engine
manifest.json, Auto-PruMUX model), the sha256 digests that tie weight and engine files to them, and the
JSON one command writes for another (`bench --json`, `validate --report`)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from .errors import PruMuxError


def finite_or_none(value):
    """A copy of `value` (dicts, lists, tuples, numbers) with every NaN or infinity replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def dumps(value, **kwargs) -> str:
    """Strict JSON (what every reader accepts): a NaN or infinity becomes null rather than the bare `NaN`
    Python's json writes by default. Every JSON file and line prumux-deploy writes goes through here."""
    return json.dumps(finite_or_none(value), allow_nan=False, **kwargs)


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_versioned_json(source: Path | str, text: str | None, error: type[Exception], *, what: str, kind: str,
                        version: int, version_key: str, fix_kind: str, fix_version: str,
                        fix_json: str = "") -> dict:
    """Parse a JSON object of our own `format` (`kind`) and `version_key` (`version`).

    source: the file (read when `text` is None) or the name used in messages. Every failure raises `error`
    with one line: the source, what is wrong, and the fix the caller names."""
    try:
        data = json.loads(Path(source).read_text() if text is None else text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{source}: not valid JSON ({e}){'; ' + fix_json if fix_json else ''}") from None
    found = data.get("format") if isinstance(data, dict) else None
    if found != kind:
        raise error(f"{source}: not {what} (format is {found!r}, expected {kind!r}); {fix_kind}")
    if data.get(version_key) != version:
        raise error(f"{source}: {version_key} {data.get(version_key)!r} is not supported (this prumux-deploy "
                    f"reads version {version}); {fix_version}")
    return data


def read_json_object(path, what: str) -> dict:
    """A JSON object from `path` (a file another command wrote); PruMuxError naming `what` to give instead."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PruMuxError(f"{path}: no such file; give {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PruMuxError(f"{path}: not a readable JSON file ({e}); give {what}") from None
    if not isinstance(value, dict):
        raise PruMuxError(f"{path}: expected a JSON object; give {what}")
    return value


def read_bench_result(path) -> dict:
    """A throughput run saved with `bench --json` (rows, baseline, protocol, machine); PruMuxError otherwise."""
    what = "the --json file of a `prumux-deploy bench` throughput run"
    result = read_json_object(path, what)
    if not isinstance(result.get("rows"), list) or not isinstance(result.get("baseline"), dict):
        raise PruMuxError(f"{path}: no throughput 'rows' and 'baseline' (a --latency run?); give {what}")
    return result
