"""Live monitoring dashboard: a Bokeh server app that follows a run through the store.

Every ``period_ms`` (default 1 s) the app reads the store's stage records (the
manifest) and shows: progress per stage (a stage x status table and a stacked
bar), throughput (commits per minute), failures with their reason codes, the
latest QC MIPs (``qc/*`` arrays of the ``qc`` stage), biomarker distributions
(``quantify`` summaries) and a link to the Dask dashboard. It works the same on
a finished store. Only pseudonymous keys are shown; the server binds 127.0.0.1.

Bokeh server embedding follows the "Embedding Bokeh server as a library"
pattern of the Bokeh user guide (``bokeh.server.server.Server`` with a
``FunctionHandler`` application).
"""
from __future__ import annotations

import errno
import html
import logging
import os
import socket
import time
from functools import partial
from typing import Any

from petcohort.engine.errors import InputError, PetCohortError
from petcohort.pipelines import dashboard_data as dd

__all__ = ["serve", "build_app", "make_document", "Dashboard", "check_port"]

log = logging.getLogger(__name__)
HOST = "127.0.0.1"


class Dashboard:
    """The models of one dashboard document and their refresh from the store.

    Parameters
    ----------
    store : CohortStore
        Opened read-only.
    dask_dashboard : str, optional
        Link to the Dask dashboard; else the ``run`` cohort JSON's ``dashboard`` field.
    """

    def __init__(self, store: Any, *, dask_dashboard: str | None = None) -> None:
        from bokeh.layouts import column, row
        from bokeh.models import ColumnDataSource, DataTable, Div, TableColumn
        from bokeh.plotting import figure

        self.store = store
        self.dask_dashboard = dask_dashboard
        self._attrs: dict[str, dict] = {}
        self._qc_shown: list[str] = []
        self._last_cost = 0.0
        self._next_due = 0.0
        self.status = Div(text="", name="progress", css_classes=["pc-progress"])
        self.link = Div(text="", name="dask-link")
        self.progress_src = ColumnDataSource({c: [] for c in dd.PROGRESS_COLUMNS})
        # An HTML table, not a DataTable: it is rebuilt on every poll, and its cells are coloured by
        # the share done (a stage x status heatmap) and carry data-* attributes for tests.
        self.progress_table = Div(text="", name="progress-table", width=560)
        self.bars = figure(title="Study-stages by status", y_range=[], height=220, width=560,
                           toolbar_location=None, name="progress-bars")
        self.bars.hbar_stack(["committed", "failed", "pending"], y="stage", height=0.8,
                             color=["#1a9850", "#d73027", "#cccccc"], source=self.progress_src,
                             legend_label=["committed", "failed", "pending"])
        self.bars.add_layout(self.bars.legend[0], "right")  # beside the bars, not over them
        self.timeline_src = ColumnDataSource({"left": [], "right": [], "per_minute": []})
        self.timeline = figure(title="Commit rate (commits per minute)", height=220, width=560,
                               toolbar_location=None, x_axis_label="minutes since first commit", name="throughput")
        self.timeline.quad(left="left", right="right", bottom=0, top="per_minute", source=self.timeline_src,
                           color="#4575b4")
        self.fail_src = ColumnDataSource({"study": [], "stage": [], "reason": [], "message": []})
        self.fail_table = DataTable(source=self.fail_src, name="failures", height=200, width=1120,
                                    columns=[TableColumn(field="study", title="study", width=160),
                                             TableColumn(field="stage", title="stage", width=80),
                                             TableColumn(field="reason", title="reason", width=180),
                                             TableColumn(field="message", title="message", width=700)],
                                    index_position=None)
        self.qc = Div(text="<i>No QC MIPs yet.</i>", name="qc-mips")
        self.hist_src = {b: ColumnDataSource({"left": [], "right": [], "manual": [], "automatic": []})
                         for b in dd.BIOMARKERS}
        hists = []
        for b in dd.BIOMARKERS:
            f = figure(title=b, height=200, width=280, toolbar_location=None, name=f"hist-{b}")
            f.quad(left="left", right="right", bottom=0, top="automatic", source=self.hist_src[b],
                   alpha=0.6, color="#d73027", legend_label="automatic")
            f.quad(left="left", right="right", bottom=0, top="manual", source=self.hist_src[b],
                   alpha=0.5, color="#1a9850", legend_label="manual")
            f.legend.label_text_font_size = "7pt"
            hists.append(f)
        title = Div(text="<h2>petcohort run monitor</h2>")
        self.layout = column(title, self.status, self.link, row(self.progress_table, self.bars),
                             row(self.timeline, self.qc), Div(text="<h3>Failures</h3>"), self.fail_table,
                             Div(text="<h3>Biomarker distributions (quantify)</h3>"), row(*hists),
                             name="petcohort-dashboard")

    def _applicable(self) -> dict[str, int]:
        from petcohort.pipelines.stages import STAGES, default_stages, load_stages

        load_stages()
        keys = self.store.study_keys()
        for key in keys:
            if key not in self._attrs:
                self._attrs[key] = self.store.study_attrs(key)
        # The stages of the current run (the runner's `run` JSON); before any
        # run, the default stages (model stages only run with a model folder).
        run = self.store.read_json("run")
        names = run.get("stages") if isinstance(run, dict) and run.get("stages") else default_stages({})
        keys = [k for k in keys if not self._attrs[k].get("ingest_failed")]
        return {name: sum(1 for k in keys if STAGES[name].applies(self._attrs[k])) for name in names
                if name in STAGES}

    def _dask_link(self) -> str:
        """Run status and Dask dashboard link (argument, else the runner's ``run`` JSON in the store)."""
        run = self.store.read_json("run")
        run = run if isinstance(run, dict) else {}
        link = self.dask_dashboard or run.get("dashboard")
        state = run.get("status")
        head = f"Run: <b>{html.escape(str(state))}</b>. " if state else "No run recorded. "
        if not link:
            return head + "Dask dashboard: not known (pass <code>dask_dashboard</code> or start a run)."
        gone = " (the run has finished; its cluster may be gone)" if state == "finished" else ""
        href = html.escape(link, quote=True)
        return head + f'Dask dashboard: <a href="{href}" target="_blank">{html.escape(link)}</a>{gone}'

    def update(self) -> dd.Snapshot | None:
        """Re-read the store and refresh every model; skipped while a slow store is being polled."""
        now = time.monotonic()
        if now < self._next_due:
            return None
        t0 = time.perf_counter()
        try:
            return self._refresh(now, t0)
        except PetCohortError as exc:
            # e.g. a record replaced between listing and reading: show it, poll again next time
            log.warning("dashboard poll failed: %s", exc.reason)
            self.status.text = f'<div class="pc-error">Store read failed ({html.escape(exc.reason)}); retrying.</div>'
            return None

    def _refresh(self, now: float, t0: float) -> dd.Snapshot:
        snap = dd.snapshot(self.store.stage_records(), self._applicable())
        prog = snap.progress
        self.progress_src.data = {c: prog[c].tolist() for c in dd.PROGRESS_COLUMNS}
        self.bars.y_range.factors = prog["stage"].tolist()[::-1]  # first stage on top
        self.progress_table.text = progress_html(prog)
        pct = 100.0 * snap.done / snap.total if snap.total else 0.0
        self.status.text = (f'<div class="pc-status" data-done="{snap.done}" data-total="{snap.total}" '
                            f'data-failed="{len(snap.failures)}">Progress: <b>{snap.done}</b> of {snap.total} '
                            f"study-stages done ({pct:.0f}%), {len(snap.failures)} failed; throughput "
                            f"{snap.per_minute:.1f} commits/min (last 5 min)</div>")
        self.link.text = self._dask_link()
        tl = snap.timeline
        self.timeline_src.data = {"left": tl["minute"].tolist(), "right": (tl["minute"] + tl["width"]).tolist(),
                                  "per_minute": tl["per_minute"].tolist()}
        self.fail_src.data = {c: snap.failures[c].tolist() for c in ("study", "stage", "reason", "message")}
        self._update_hists(snap.biomarkers)
        if snap.latest_qc != self._qc_shown:
            self._update_qc(snap.latest_qc)
        # Poll no more often than 3x the cost of one poll (a big store on S3 must not be hammered).
        self._last_cost = time.perf_counter() - t0
        self._next_due = now + 3.0 * self._last_cost
        return snap

    def _update_hists(self, values: dict) -> None:
        import numpy as np

        for b, groups in values.items():
            both = np.concatenate([groups["manual"], groups["automatic"]])
            if both.size == 0:
                continue
            edges = np.histogram_bin_edges(both, bins=20)
            self.hist_src[b].data = {"left": edges[:-1].tolist(), "right": edges[1:].tolist(),
                                     "manual": np.histogram(groups["manual"], edges)[0].tolist(),
                                     "automatic": np.histogram(groups["automatic"], edges)[0].tolist()}

    def _update_qc(self, keys: list[str]) -> None:
        from petcohort.pipelines import figures
        from petcohort.pipelines.report_data import pick_auto_source

        panels = []
        for key in keys:
            if not self.store.has_array(key, "qc/mip_pet"):
                continue  # recommitted since the listing
            names = {n[len("qc/mip_"):] for n in self.store.array_names(key)
                     if n.startswith("qc/mip_") and n != "qc/mip_pet"}
            tp = int((self._attrs.get(key) or {}).get("timepoint", 0))
            shown = [s for s in ("manual", pick_auto_source(names, tp)) if s in names]
            masks = {s: self.store.read_array(key, f"qc/mip_{s}") for s in shown}
            rec = self.store.stage_record(key, "qc") or {}
            sz, sx = (rec.get("summary") or {}).get("mip_spacing_mm") or [1.0, 1.0]
            panels.append(figures.MipPanel(key, self.store.read_array(key, "qc/mip_pet"), masks,
                                           float(sz) / float(sx)))
        if panels:
            uri = figures.to_data_uri(figures.mip_row(panels))
            self.qc.text = (f'<div data-qc="{len(panels)}"><b>Latest QC MIPs</b><br>'
                            f'<img src="{uri}" style="max-height:320px"></div>')
        self._qc_shown = list(keys)


def progress_html(prog) -> str:
    """Stage x status table; each row tinted by its share of finished study-stages."""
    head = "".join(f"<th style='padding:2px 8px'>{c}</th>" for c in dd.PROGRESS_COLUMNS)
    rows = []
    for r in prog.itertuples(index=False):
        tint = f"rgba(26,152,80,{0.1 + 0.5 * r.percent / 100:.2f})" if not r.failed else "rgba(215,48,39,0.25)"
        cells = "".join(f"<td style='padding:2px 8px;text-align:right'>{html.escape(str(getattr(r, c)))}</td>"
                        for c in dd.PROGRESS_COLUMNS)
        rows.append(f"<tr data-stage='{html.escape(r.stage)}' data-done='{r.committed + r.failed}' "
                    f"style='background:{tint}'>{cells}</tr>")
    return (f"<table class='pc-progress-table' style='border-collapse:collapse;font-size:12px'>"
            f"<tr>{head}</tr>{''.join(rows)}</table>")


def make_document(doc: Any, store_url: str | os.PathLike, *, dask_dashboard: str | None = None,
                  period_ms: int = 1000) -> Dashboard:
    """Fill the Bokeh ``doc`` with the dashboard of ``store_url`` and poll every ``period_ms``."""
    from petcohort.storage.store import CohortStore

    dash = Dashboard(CohortStore.open(store_url, mode="r"), dask_dashboard=dask_dashboard)
    dash.update()
    doc.title = "petcohort run monitor"
    doc.add_root(dash.layout)
    doc.add_periodic_callback(dash.update, period_ms)
    return dash


def build_app(store_url: str | os.PathLike, *, dask_dashboard: str | None = None, period_ms: int = 1000):
    """A Bokeh ``Application`` serving :func:`make_document` for ``store_url``."""
    from bokeh.application import Application
    from bokeh.application.handlers.function import FunctionHandler

    return Application(FunctionHandler(partial(make_document, store_url=store_url, dask_dashboard=dask_dashboard,
                                               period_ms=period_ms)))


def check_port(port: int) -> None:
    """Raise InputError ``PORT_IN_USE`` when ``port`` on 127.0.0.1 is taken (``BAD_PORT`` if out of range)."""
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise InputError("BAD_PORT", f"port must be an integer in 1-65535, got {port!r}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise InputError("PORT_IN_USE", f"port {port} on {HOST} is in use or not allowed; choose "
                                                "another with --port") from None
            raise


def serve(store_url: str | os.PathLike, *, port: int = 5007, dask_dashboard: str | None = None,
          block: bool = True):
    """Serve the dashboard of ``store_url`` on http://127.0.0.1:PORT/ (blocks unless ``block=False``).

    Raises
    ------
    InputError
        ``PORT_IN_USE`` / ``BAD_PORT``.
    StoreError
        ``NOT_A_STORE`` when ``store_url`` is not a cohort store.
    """
    from bokeh.server.server import Server

    from petcohort.storage.store import CohortStore

    CohortStore.open(store_url, mode="r")  # fail now, not on the first browser visit
    check_port(port)
    origins = [f"127.0.0.1:{port}", f"localhost:{port}"]
    try:
        server = Server({"/": build_app(store_url, dask_dashboard=dask_dashboard)}, address=HOST, port=port,
                        allow_websocket_origin=origins)
    except OSError as exc:  # lost a race for the port after check_port
        if exc.errno == errno.EADDRINUSE:
            raise InputError("PORT_IN_USE", f"port {port} on {HOST} is in use; choose another with --port") from None
        raise
    server.start()
    log.info("dashboard on http://%s:%d/", HOST, port)
    if block:
        server.io_loop.start()
    return server
