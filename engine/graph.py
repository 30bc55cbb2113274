"""The per-study task graph of a cohort run, as a plain description (never computed).

One task per (study, stage) that applies to the study. A task depends on the
same study's ``requires`` stages and on the patient's baseline study's
``needs_baseline`` stages, when those are tasks of this graph too (a stage
that is not selected, or is skipped because it is up to date, is read from
its committed record by the task instead). GPU stages carry
``resources={"GPU": 1}``; the runner drops the annotation when no worker
advertises that resource, so a GPU-capable stage still runs on a CPU cluster.

Task keys hold only the stage name, the pseudonymous study key and a run
token (``quantify-P-3fa81c02d9-T1-1a2b3c4d``): raw identifiers never reach the
scheduler or the dashboard. Nothing here imports dask: the runner
(``pipelines/run.py``) turns the description into ``client.submit`` calls.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol

from petcohort.engine.errors import ConfigError, StoreError

__all__ = ["StageLike", "TaskSpec", "StudyGraph", "task_key", "baseline_keys", "topological_stages",
           "build_graph"]

_SAFE = re.compile(r"[A-Za-z0-9._-]+")


class StageLike(Protocol):
    """What the graph needs of a stage (``pipelines.stages.Stage`` satisfies it)."""

    name: str
    requires: tuple[str, ...]
    needs_baseline: tuple[str, ...]
    gpu: bool

    def applies(self, attrs: dict[str, Any]) -> bool: ...


@dataclass(frozen=True)
class TaskSpec:
    """One study-stage task.

    Attributes
    ----------
    key : str
        Dask task key (pseudonymous).
    study, stage : str
        The study key and stage name.
    baseline : str or None
        The patient's baseline study key (None for a baseline, or when the
        patient has no baseline in the store).
    deps : tuple of str
        Keys of the tasks of this graph that must finish first.
    resources : dict
        Dask worker resources (``{"GPU": 1}`` for GPU stages, else empty).
    """

    key: str
    study: str
    stage: str
    baseline: str | None
    deps: tuple[str, ...] = ()
    resources: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyGraph:
    """The whole run: tasks by key, in a dependency-respecting order."""

    tasks: dict[str, TaskSpec]
    order: tuple[str, ...]
    stages: tuple[str, ...]

    def by_study_stage(self) -> dict[tuple[str, str], TaskSpec]:
        return {(t.study, t.stage): t for t in self.tasks.values()}

    def downstream(self, key: str) -> set[str]:
        """Keys of every task that depends, directly or not, on ``key``."""
        children: dict[str, list[str]] = {}
        for t in self.tasks.values():
            for d in t.deps:
                children.setdefault(d, []).append(t.key)
        out: set[str] = set()
        todo = [key]
        while todo:
            for c in children.get(todo.pop(), ()):
                if c not in out:
                    out.add(c)
                    todo.append(c)
        return out


def task_key(stage: str, study: str, token: str) -> str:
    """The Dask key of (study, stage) in run ``token``; refuses anything outside ``[A-Za-z0-9._-]``."""
    for what, value in (("stage", stage), ("study key", study), ("run token", token)):
        if not isinstance(value, str) or not _SAFE.fullmatch(value):
            raise StoreError("BAD_KEY", f"{what} {value!r} cannot be part of a task key; "
                                        "expected characters [A-Za-z0-9._-]")
    return f"{stage}-{study}-{token}"


def baseline_keys(studies: Mapping[str, Mapping[str, Any]]) -> dict[str, str | None]:
    """Map each study key to its patient's baseline (timepoint 0) study key.

    Baselines map to None; a follow-up whose patient has no baseline in
    ``studies`` maps to None too (its baseline-needing stages then fail
    with ``NO_BASELINE``).
    """
    first: dict[str, str] = {}
    for key in sorted(studies):
        attrs = studies[key]
        if int(attrs.get("timepoint", 0)) == 0:
            first.setdefault(str(attrs.get("patient")), key)
    return {key: (None if int(attrs.get("timepoint", 0)) == 0 else first.get(str(attrs.get("patient"))))
            for key, attrs in studies.items()}


def topological_stages(stages: Mapping[str, StageLike], selected: Iterable[str]) -> list[str]:
    """``selected`` sorted so that every stage follows the stages it requires.

    Raises
    ------
    ConfigError
        ``STAGE_CYCLE`` when the requirements form a cycle.
    """
    chosen = list(dict.fromkeys(selected))
    done: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise ConfigError("STAGE_CYCLE", f"stage requirements form a cycle: {' -> '.join(path + (name,))}")
        state[name] = 1
        st = stages[name]
        for dep in (*st.requires, *st.needs_baseline):
            if dep in chosen and dep in stages:
                visit(dep, path + (name,))
        state[name] = 2
        done.append(name)

    for name in chosen:
        visit(name, ())
    return done


def build_graph(stages: Mapping[str, StageLike], studies: Mapping[str, Mapping[str, Any]], *,
                selected: Iterable[str], token: str, skip: Iterable[tuple[str, str]] = ()) -> StudyGraph:
    """Describe the tasks of one run.

    Parameters
    ----------
    stages : mapping of str to StageLike
        The stage registry.
    studies : mapping of str to dict
        Study key -> study attrs (``patient``, ``timepoint``).
    selected : iterable of str
        Stage names to run.
    token : str
        Run token, part of every task key (reruns on one client never collide).
    skip : iterable of (study, stage)
        Study-stages that are up to date: no task; dependants read their record.

    Returns
    -------
    StudyGraph
    """
    unknown = sorted(set(selected) - set(stages))
    if unknown:
        raise ConfigError("UNKNOWN_STAGE", f"unknown stage(s) {unknown}; known: {sorted(stages)}")
    order = topological_stages(stages, selected)
    skipped = set(skip)
    base = baseline_keys(studies)
    tasks: dict[str, TaskSpec] = {}
    keys: dict[tuple[str, str], str] = {}
    for stage_name in order:
        st = stages[stage_name]
        for study in sorted(studies):
            attrs = studies[study]
            if not st.applies(dict(attrs)) or (study, stage_name) in skipped:
                continue
            deps = [keys[(study, r)] for r in st.requires if (study, r) in keys]
            if base[study] is not None:
                deps += [keys[(base[study], r)] for r in st.needs_baseline if (base[study], r) in keys]
            key = task_key(stage_name, study, token)
            keys[(study, stage_name)] = key
            tasks[key] = TaskSpec(key, study, stage_name, base[study], tuple(deps),
                                  {"GPU": 1} if st.gpu else {})
    return StudyGraph(tasks, tuple(tasks), tuple(order))
