"""The reason-code registry matches the source tree, the docs and the CLI; type errors are TypeErrors."""
from __future__ import annotations

import ast
import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

from petcohort.engine import errors
from petcohort.engine import reasons as R

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("engine", "storage", "pipelines")
REGISTRY = ROOT / "engine" / "reasons.py"
DOC = ROOT / "docs" / "reasons.md"
CODE = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+")

# UPPER_SNAKE literals that are not reason codes: DICOM defined terms (PS3.3 C.8.8.8 RT ROI Interpreted
# Type, C.8.8.6 Contour Geometric Type), a private creator, a CUDA driver error name, environment
# variables, typing.TYPE_CHECKING and an nnU-Net channel file stem. Module-level constant names (and
# __all__ entries) and PETCOHORT_* environment variables are excluded automatically.
NOT_REASON_CODES = frozenset({
    "BRACHY_ACCESSORY", "BRACHY_CHANNEL", "BRACHY_CHNL_SHLD", "BRACHY_SRC_APP", "CONTRAST_AGENT",
    "DOSE_MEASUREMENT", "DOSE_REGION", "IRRAD_VOLUME", "TREATED_VOLUME", "CLOSED_PLANAR", "CLOSEDPLANAR_XOR",
    "GEMS_PETD_01", "CUDA_ERROR_OUT_OF_MEMORY", "CUDA_VISIBLE_DEVICES", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
    "XDG_CONFIG_HOME", "TYPE_CHECKING", "PET_BL",
})


class _Scan:
    """Code-like literals and f-string code templates of the source tree (engine/, storage/, pipelines/)."""

    def __init__(self) -> None:
        self.literals: dict[str, set[str]] = {}
        self.templates: dict[str, set[str]] = {}
        self.names: set[str] = set()
        for path in sorted(p for d in SOURCE_DIRS for p in (ROOT / d).rglob("*.py")):
            if path != REGISTRY:
                self._file(path)

    def _file(self, path: Path) -> None:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        where = str(path.relative_to(ROOT))
        for node in tree.body:  # module-level constants are names, not codes (e.g. "STORE_KIND" in __all__)
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, ast.AnnAssign) else []
            for t in targets:
                self.names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and CODE.fullmatch(node.value):
                self.literals.setdefault(node.value, set()).add(where)
            elif isinstance(node, ast.JoinedStr):
                parts = [v.value if isinstance(v, ast.Constant) else None for v in node.values]
                # f"NO_{organ.upper()}_MASK": a code built at run time, matched by its template
                if all(p is None or re.fullmatch(r"[A-Z0-9_]*", p) for p in parts) and \
                        any(p and "_" in p for p in parts):
                    regex = "".join(re.escape(p) if p is not None else "[A-Z0-9_]+" for p in parts)
                    self.templates.setdefault(regex, set()).add(where)

    def codes(self) -> dict[str, set[str]]:
        """Literals that must be registered codes."""
        return {c: w for c, w in self.literals.items()
                if c not in self.names and c not in NOT_REASON_CODES and not c.startswith("PETCOHORT_")}


@pytest.fixture(scope="module")
def scan() -> _Scan:
    return _Scan()


def test_every_code_in_the_source_is_registered(scan):
    missing = {c: sorted(w) for c, w in scan.codes().items() if c not in R.REASONS}
    assert not missing, f"register these codes in engine/reasons.py (or list a non-code in NOT_REASON_CODES): {missing}"
    for regex, where in scan.templates.items():
        assert any(re.fullmatch(regex, c) for c in R.REASONS), \
            f"no registered code matches the run-time code template {regex} ({sorted(where)})"


def test_every_registered_code_is_used(scan):
    unused = [c for c in R.REASONS if c not in scan.literals
              and not any(re.fullmatch(regex, c) for regex in scan.templates)]
    assert not unused, f"registered but used nowhere in {SOURCE_DIRS}: {unused}"


def test_merged_synonyms_no_longer_appear():
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    old = re.compile(r"\b(" + "|".join(sorted(R.RENAMED, key=len, reverse=True)) + r")\b")
    hits = []
    for name in files:
        path = ROOT / name
        if path in (REGISTRY, DOC) or path.suffix not in {".py", ".md", ".yaml", ".yml", ".html", ".js"} \
                or not path.is_file():
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if old.search(line):
                hits.append(f"{name}:{n}: {old.search(line).group(1)}")
    assert not hits, f"merged reason codes still used (see engine/reasons.py RENAMED): {hits}"


def test_registry_is_well_formed():
    assert len(R.REASONS) == len({r.code for r in R.REASONS.values()})
    for r in R.REASONS.values():
        assert CODE.fullmatch(r.code), r.code
        assert r.category in R.CATEGORIES, r
        assert r.kind in ("value", "type"), r
        assert r.meaning and "\n" not in r.meaning and "|" not in r.meaning and len(r.meaning) <= 120, r
    for old, new in R.RENAMED.items():
        assert old not in R.REASONS and new in R.REASONS, (old, new)
        assert R.canonical(old) == new
    assert R.canonical("BAD_VALUE") == "BAD_VALUE"


@pytest.mark.parametrize("code", ["NOT_A_REGISTERED_CODE", "bad", "", None, 3])
def test_unregistered_code_is_a_programming_error(code):
    with pytest.raises(TypeError, match="not registered"):
        errors.InputError(code, "message")


def test_merged_code_is_refused_naming_its_replacement():
    for old, new in R.RENAMED.items():
        with pytest.raises(TypeError, match=f"merged into '{new}'"):
            errors.ConfigError(old, "message")


ERROR_CLASSES = [getattr(errors, n) for n in errors.__all__ if n != "PetCohortTypeError"]


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_type_codes_make_type_errors_and_value_codes_value_errors(cls):
    typed = cls("BAD_TYPE", "x must be a number, got 'a'")
    assert isinstance(typed, (cls, errors.PetCohortError, TypeError, ValueError))
    assert all(isinstance(typed, k) for k in (cls, errors.PetCohortError, errors.PetCohortTypeError, TypeError))
    assert (typed.reason, typed.message, str(typed)) == ("BAD_TYPE", "x must be a number, got 'a'",
                                                        "[BAD_TYPE] x must be a number, got 'a'")
    valued = cls("BAD_VALUE", "x must be > 0, got -1")
    assert isinstance(valued, cls) and isinstance(valued, ValueError) and not isinstance(valued, TypeError)
    for err in (typed, valued):  # Dask ships errors between processes
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and (back.reason, back.message) == (err.reason, err.message)


def test_every_type_code_raises_type_error_based():
    for code in (r.code for r in R.REASONS.values() if r.kind == "type"):
        assert isinstance(errors.InputError(code, "m"), TypeError), code
    assert R.is_type_code("BAD_TYPE") and not R.is_type_code("BAD_VALUE") and not R.is_type_code("NOPE")


def test_raise_sites_split_type_from_value():
    from petcohort.engine.cluster_config import parse_cluster_config
    from petcohort.engine.kernels._validate import check_positive

    with pytest.raises(TypeError) as typed:
        check_positive("abc", "radius_mm")
    assert isinstance(typed.value, errors.InputError) and typed.value.reason == "BAD_TYPE"
    with pytest.raises(errors.InputError) as valued:
        check_positive(-1.0, "radius_mm")
    assert valued.value.reason == "BAD_VALUE" and not isinstance(valued.value, TypeError)
    with pytest.raises(TypeError) as cfg:
        parse_cluster_config({"kind": "local", "processes": 1})
    assert isinstance(cfg.value, errors.ConfigError) and cfg.value.reason == "BAD_TYPE"
    with pytest.raises(errors.ConfigError) as kind:
        parse_cluster_config({"kind": "mesos"})
    assert kind.value.reason == "BAD_VALUE" and not isinstance(kind.value, TypeError)


def test_docs_table_is_in_sync_with_the_registry():
    assert DOC.read_text(encoding="utf-8") == R.markdown_table(), (
        "docs/reasons.md is stale; regenerate it: python -c \"from petcohort.engine.reasons import "
        "markdown_table; open('docs/reasons.md', 'w').write(markdown_table())\"")
    assert "docs/reasons.md" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_cli_lists_every_code():
    from typer.testing import CliRunner

    from petcohort.pipelines.cli import app

    as_json = CliRunner().invoke(app, ["reasons", "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output) == [r._asdict() for r in R.REASONS.values()]
    text = CliRunner().invoke(app, ["reasons"])
    assert text.exit_code == 0, text.output
    assert [line.split()[0] for line in text.output.splitlines()] == list(R.REASONS)


def test_importing_the_errors_stays_cheap():
    probe = "import sys, petcohort.engine.errors; print(sorted(m for m in ('numpy', 'yaml', 'dask', 'pandas') " \
            "if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
