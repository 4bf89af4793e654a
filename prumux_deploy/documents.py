"""The files prumux-deploy writes and reads back: versioned JSON documents (checkpoint config.json, engine
manifest.json, Auto-PruMUX model), the sha256 digests that tie weight and engine files to them, and the
JSON one command writes for another (`bench --json`, `validate --report`)."""

from __future__ import annotations

import hashlib
import json
import math
import os
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


def directory_kind(folder) -> str | None:
    """'engine' for a directory `export` wrote (manifest.json), 'checkpoint' for one `init`, `train`, `import` or
    `compact` wrote (config.json beside model.safetensors), else None: what the refusals of a directory given
    in the wrong place name."""
    folder = Path(folder)
    if (folder / "manifest.json").is_file():
        return "engine"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return "checkpoint"
    return None


def json_kind(value) -> str:
    """What a JSON value is, for one-line messages about a field of the wrong type: "a list", "text ('768')"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str):
        return f"text ({value[:40]!r})"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    return f"a {type(value).__name__}"


def listed_file(directory, name, source, error: type[Exception], what: str, fix: str) -> Path:
    """The file `name` that `source` (a config.json or manifest.json in `directory`) lists, as a path inside
    `directory`; refused with `error` (one line) before it is opened or hashed when the name is not text, is
    absolute, climbs out with "..", or is (or passes through) a symbolic link leading outside `directory`:
    a listing names the artifact's own files, never /etc/passwd. what: "checkpoint" or "engine"."""
    directory = Path(directory)
    if not isinstance(name, str) or not name or "\0" in name:
        raise error(f"{source}: lists {json_kind(name)} as one of its files; files are listed by name. {fix}")
    if os.path.isabs(name) or ".." in Path(name).parts:
        raise error(f"{source}: lists the file {name!r}, which lies outside the {what} directory {directory}; only "
                    f"the {what}'s own files may be listed (nothing was read). {fix}")
    path = directory / name
    real, home = os.path.realpath(path), os.path.realpath(directory)
    if os.path.commonpath([real, home]) != home:
        raise error(f"{source}: lists the file {name!r}, a symbolic link to {real} outside the {what} directory "
                    f"{directory} (nothing was read); copy the file into {directory}, or {fix[:1].lower() + fix[1:]}")
    return path


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
