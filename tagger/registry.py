"""Finding model files: by path, or by name in the model directories.

Search order for a name: each directory in ``$GENRE_TAGGER_MODELS`` (``:``-separated), the user's
``~/.local/share/genre-tagger/models``, then the models shipped with genre-tagger. A name ``foo``
matches ``foo.onnx``.

The shipped models live in the repository's ``models/`` folder; the wheel carries them as the package
data ``tagger/models/`` (see ``pyproject.toml``), found with :mod:`importlib.resources`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tagger.errors import ModelError

DEFAULT_MODEL = "msd-musicnn-gtzan"
# The same model with its front end's convolutions in int8: what a CPU runs when no model is named (its
# card has the accuracy before and after; GPUs keep the float32 file).
DEFAULT_CPU_MODEL = "msd-musicnn-gtzan-int8"


def shipped_models_dir() -> Path:
    """The folder of the models shipped with genre-tagger.

    An installed wheel has them as package data, ``tagger/models``; an editable install (a checkout,
    ``pip install -e .``) imports ``tagger`` from the repository, whose ``models/`` folder sits beside it.
    """
    package = resources.files("tagger")
    packaged = package.joinpath("models")
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(str(package)).parent / "models"


def model_dirs() -> list[Path]:
    """The directories searched for model names, in order."""
    dirs = [Path(p).expanduser() for p in os.environ.get("GENRE_TAGGER_MODELS", "").split(":") if p]
    data_home = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    dirs.append(data_home / "genre-tagger" / "models")
    dirs.append(shipped_models_dir())
    return dirs


def resolve_model(name_or_path: str | Path | None = None) -> Path:
    """The file for a model path or name (``None`` means the default model)."""
    target = str(name_or_path) if name_or_path else DEFAULT_MODEL
    as_path = Path(target).expanduser()
    if as_path.suffix == ".onnx" or os.sep in target:
        if not as_path.is_file():
            raise ModelError(f"{as_path}: no such model file")
        return as_path
    for directory in model_dirs():
        candidate = directory / f"{target}.onnx"
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(d) for d in model_dirs())
    installed = ", ".join(entry.name for entry in list_models()) or "none"
    raise ModelError(f"{target}: no such model (installed: {installed}; searched {searched})")


def default_cpu_model() -> Path | None:
    """The default model's CPU file, if one is installed (else the CPU runs the default model itself)."""
    try:
        return resolve_model(DEFAULT_CPU_MODEL)
    except ModelError:
        return None


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path


def list_models() -> list[ModelEntry]:
    """Every ``*.onnx`` file in the model directories; earlier directories shadow later ones."""
    seen: dict[str, ModelEntry] = {}
    for directory in model_dirs():
        if directory.is_dir():
            for path in sorted(directory.glob("*.onnx")):
                seen.setdefault(path.stem, ModelEntry(path.stem, path))
    return list(seen.values())
