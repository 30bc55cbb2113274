"""Code fingerprints of stages: what a study-stage record says about the code that made it.

A stage's fingerprint covers

- the source of every petcohort module its stage module imports, transitively
  within petcohort (found by parsing ``import`` statements with :mod:`ast`,
  function-level imports included, ``if TYPE_CHECKING:`` blocks not; importing
  a module also runs its parent packages' ``__init__``, so those count too);
- the versions of the numerical libraries that closure imports
  (:data:`LIBRARIES`; an uninstalled one is ``None``);
- for the nnU-Net stages, the SHA-256 of the model files it loads
  (``dataset.json``, ``plans.json`` and each used fold's checkpoint).

Modules in :data:`NOT_COMPUTATION` (the stage registry, the configuration
schema, the error classes) are left out: they do not compute results, and
their effect on a stage is captured by its ``params``; editing them (e.g.
adding a reason code) must not redo a cohort.

Everything is computed on the client that plans the run, from a
:class:`CodeIndex` (module name -> source text). Tests build an index from
an edited copy of the sources (:meth:`CodeIndex.with_source`) instead of
touching files.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import json
import os
import sys
import textwrap
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from petcohort.pipelines.config import RunConfig
    from petcohort.pipelines.stages import Stage

__all__ = ["LIBRARIES", "NOT_COMPUTATION", "SUBPACKAGES", "CodeIndex", "stage_code", "model_files",
           "library_version", "code_changes", "file_sha256"]

#: import name -> distribution name of the libraries whose version enters a fingerprint.
LIBRARIES = {"numpy": "numpy", "scipy": "scipy", "cc3d": "connected-components-3d", "SimpleITK": "SimpleITK",
             "ants": "antspyx", "torch": "torch", "nnunetv2": "nnunetv2"}
#: petcohort modules that never enter a fingerprint (module docstring).
NOT_COMPUTATION = frozenset({"petcohort.pipelines.stages", "petcohort.pipelines.config",
                             "petcohort.pipelines.config_checks", "petcohort.engine.errors"})
#: The installed petcohort packages (pyproject.toml ``package-dir``).
SUBPACKAGES = ("petcohort.engine", "petcohort.storage", "petcohort.pipelines")
_ROOT = "petcohort"
_HEX = 16  # hex digits kept per module hash (64 bits: a collision is not a practical concern here)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha_obj(obj: Any) -> str:
    return _sha(json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode())[:_HEX]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Import statements of ``tree``, anywhere but in ``if TYPE_CHECKING:`` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


@lru_cache(maxsize=1024)
def _imports(source: str) -> tuple[tuple[int, str | None, tuple[str, ...]], ...]:
    """The import statements of a module's source, as (level, from-module, names) each.

    ``import a.b, c`` is ``(-1, None, ("a.b", "c"))``; ``from ..x import y`` is
    ``(2, "x", ("y",))``. Cached by source text: parsing is most of a plan's
    fixed cost, and a run plans once per phase (and ``bench_scaling`` many times).
    """
    out = []
    for node in _import_nodes(ast.parse(source)):
        names = tuple(a.name for a in node.names)
        out.append((-1, None, names) if isinstance(node, ast.Import) else (node.level, node.module, names))
    return tuple(out)


@dataclass(frozen=True)
class CodeIndex:
    """Source text of the petcohort modules, and the import graph parsed from it.

    Parameters
    ----------
    sources : mapping of str to str
        Module name (``petcohort.engine.kernels.sulpeak``) -> source text.
    packages : frozenset of str
        The module names that are packages (``__init__.py``).
    """

    sources: Mapping[str, str]
    packages: frozenset[str] = frozenset()
    _direct: dict[str, tuple[frozenset[str], frozenset[str]]] = field(default_factory=dict, repr=False,
                                                                       compare=False)

    @classmethod
    def from_package(cls) -> "CodeIndex":
        """Read every ``.py`` file of the installed petcohort packages."""
        sources: dict[str, str] = {}
        packages: set[str] = set()
        for pkg in SUBPACKAGES:
            spec = importlib.util.find_spec(pkg)
            for root in (spec.submodule_search_locations or []) if spec else []:
                root = Path(root)
                for path in sorted(root.rglob("*.py")):
                    parts = list(path.relative_to(root).with_suffix("").parts)
                    if parts[-1] == "__init__":
                        parts = parts[:-1]
                        packages.add(".".join([pkg, *parts]))
                    if any(not p.isidentifier() for p in parts):
                        continue
                    sources[".".join([pkg, *parts])] = path.read_text(encoding="utf-8")
        return cls(sources, frozenset(packages))

    def with_source(self, module: str, text: str) -> "CodeIndex":
        """A copy in which ``module`` has source ``text`` (an edit, without touching files)."""
        return CodeIndex({**self.sources, module: text}, self.packages)

    def digest(self, module: str) -> str:
        """SHA-256 (16 hex) of a module's source."""
        return _sha(self.sources[module].encode("utf-8"))[:_HEX]

    def _resolve(self, module: str, level: int, name: str | None) -> str:
        """The absolute module of ``from <level dots><name> import ...`` written in ``module``."""
        if not level:
            return name or ""
        base = module.split(".")
        base = base if module in self.packages else base[:-1]
        base = base[: len(base) - (level - 1)]
        return ".".join(base + ([name] if name else []))

    def direct(self, module: str) -> tuple[frozenset[str], frozenset[str]]:
        """(petcohort modules, top-level library names) imported directly by ``module``."""
        if module in self._direct:
            return self._direct[module]
        mods: set[str] = set()
        libs: set[str] = set()
        for level, origin, imported in _imports(self.sources[module]):
            names = list(imported) if level < 0 else [self._resolve(module, level, origin)]
            if level >= 0:  # "from pkg import mod" imports the submodule pkg.mod
                names += [f"{names[0]}.{a}" for a in imported if f"{names[0]}.{a}" in self.sources]
            for name in names:
                top = name.split(".")[0]
                if top == _ROOT:
                    mods.update(self._with_parents(name))
                elif top in LIBRARIES:
                    libs.add(top)
        self._direct[module] = (frozenset(mods), frozenset(libs))
        return self._direct[module]

    def _with_parents(self, name: str) -> set[str]:
        parts = name.split(".")
        return {".".join(parts[:i]) for i in range(2, len(parts) + 1)} & set(self.sources)

    def closure(self, module: str) -> tuple[list[str], list[str]]:
        """Sorted (petcohort modules, library names) that importing ``module`` runs, ``module`` included.

        Modules of :data:`NOT_COMPUTATION` are neither listed nor followed.
        """
        seen: set[str] = set()
        libs: set[str] = set()
        todo = [m for m in self._with_parents(module) | {module} if m in self.sources]
        while todo:
            m = todo.pop()
            if m in seen or m in NOT_COMPUTATION:
                continue
            seen.add(m)
            mods, direct_libs = self.direct(m)
            libs |= direct_libs
            todo.extend(mods - seen)
        return sorted(seen), sorted(libs)


@lru_cache(maxsize=None)
def library_version(name: str) -> str | None:
    """Installed version of library ``name`` (an import name of :data:`LIBRARIES`), None when absent."""
    try:
        return metadata.version(LIBRARIES.get(name, name))
    except metadata.PackageNotFoundError:
        return None


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, cached by (path, size, mtime) within the process (checkpoints are large)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key]


def model_files(folder: str | os.PathLike, folds: tuple[int, ...] | None, *, fold_map: bool = False,
                checkpoint: str = "checkpoint_final.pth") -> dict[str, str]:
    """SHA-256 of the files nnU-Net loads from a model folder, keyed by their path inside it.

    ``dataset.json``, ``plans.json`` and ``fold_<k>/<checkpoint>`` of each
    fold in ``folds`` (every fold present when None or with a fold map, which
    picks folds per patient). Paths stay relative: a folder path may hold a
    user name and never enters a record here.
    """
    root = Path(folder)
    names = [n for n in ("dataset.json", "plans.json") if (root / n).is_file()]
    if folds is None or fold_map:
        fold_dirs = sorted(p.name for p in root.glob("fold_*") if (p / checkpoint).is_file())
    else:
        fold_dirs = [f"fold_{f}" for f in folds]
    names += [f"{d}/{checkpoint}" for d in fold_dirs if (root / d / checkpoint).is_file()]
    return {n: file_sha256(root / n) for n in names}


def _outside_source(module: str, fn: Any) -> str | None:
    """Source of a stage module outside petcohort: its file, else the stage function's own source.

    A stage registered by a script run as ``python script.py`` lives in
    ``__main__``, which has a file but no import spec (``find_spec`` raises
    ValueError); one defined in a notebook has neither, and is fingerprinted by
    its function's source. None when no source can be found (the fingerprint
    then holds the libraries and models only).
    """
    path = getattr(sys.modules.get(module), "__file__", None)
    if path is None:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        path = spec.origin if spec is not None else None
    if path and str(path).endswith(".py") and Path(path).is_file():
        return Path(path).read_text(encoding="utf-8")
    try:
        return textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        return None


def stage_code(stage: "Stage", config: "RunConfig", index: CodeIndex) -> dict[str, Any]:
    """The code fingerprint of ``stage`` under ``config`` (what its records hold as ``code``).

    Returns
    -------
    dict
        ``{"digest": 16 hex, "modules": {module: 16 hex}, "libraries":
        {name: version or None}, "models": {"<config key>/<file>": sha256}}``;
        ``models`` only for the nnU-Net stages. ``digest`` hashes the rest.
        A stage module outside petcohort (a test's) is read from its file.
    """
    from petcohort.pipelines.stages import MODEL_STAGES  # noqa: PLC0415 - stages imports this module's users

    module = stage.module or stage.fn.__module__
    if module not in index.sources:
        source = _outside_source(module, stage.fn)
        if source is not None:
            index = index.with_source(module, source)
    modules, libs = index.closure(module) if module in index.sources else ([], [])
    code: dict[str, Any] = {"modules": {m: index.digest(m) for m in modules},
                            "libraries": {lib: library_version(lib) for lib in libs}}
    key = MODEL_STAGES.get(stage.name)
    folder = getattr(config.segment, key) if key else None
    if folder:
        files = model_files(folder, config.segment.folds, fold_map=config.segment.fold_map is not None)
        code["models"] = {f"{key}/{name}": sha for name, sha in files.items()}
    code["digest"] = _sha_obj(code)
    return code


def code_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """What differs between two ``code`` fingerprints, one short line each (module, library, model file)."""
    if not old:
        return ["no code fingerprint in the record (written by an earlier petcohort)"]
    out: list[str] = []
    for kind, label in (("modules", "module"), ("libraries", "library"), ("models", "model file")):
        a, b = dict(old.get(kind) or {}), dict(new.get(kind) or {})
        for name in sorted(set(a) | set(b)):
            if name not in a:
                out.append(f"{label} {name} added")
            elif name not in b:
                out.append(f"{label} {name} no longer used")
            elif a[name] != b[name]:
                out.append(f"{label} {name} changed" + (f" ({a[name]} -> {b[name]})" if kind == "libraries" else ""))
    if not out and old.get("digest") != new.get("digest"):
        out.append("code fingerprint changed")
    return out
