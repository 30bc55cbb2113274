"""Dashboard: snapshot computations, the Bokeh document, port handling."""
from __future__ import annotations

import datetime as dt
import socket

import numpy as np
import pytest
from bokeh.document import Document

from petcohort.engine.errors import InputError, StoreError
from petcohort.pipelines import dashboard_data as dd
from petcohort.pipelines.dashboard import check_port, make_document, serve
from test_report import make_store

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)


def _rec(status, minute, stage="quantify", **extra):
    return {"status": status, "stage": stage, "started": (T0 + dt.timedelta(minutes=minute)).isoformat(),
            "seconds": 1.0, **extra}


def test_progress_and_failures_hand_computed():
    records = {("A-T0", "quantify"): _rec("committed", 0), ("B-T0", "quantify"): _rec("committed", 1),
               ("C-T0", "quantify"): _rec("failed", 1, reason="SUV_MISSING_WEIGHT", message="no weight")}
    prog = dd.progress_frame(records, {"organs": 4, "quantify": 4})
    q = prog.set_index("stage").loc["quantify"]
    assert (q.total, q.committed, q.failed, q.pending, q.percent) == (4, 2, 1, 1, 75.0)
    assert prog.set_index("stage").loc["organs", "pending"] == 4
    fails = dd.failures(records)
    assert fails.to_dict("records") == [{"study": "C-T0", "stage": "quantify", "reason": "SUV_MISSING_WEIGHT",
                                         "message": "no weight"}]


def test_throughput_counts_recent_commits():
    records = {(f"S{i}", "qc"): _rec("committed", i * 0.5, stage="qc") for i in range(10)}  # 0 .. 4.5 min
    per_min, timeline = dd.throughput(records, now=T0 + dt.timedelta(minutes=10))
    # all commits finished by 4:31, so none lies in the last 5 minutes before 10:00
    assert per_min == pytest.approx(0.0)
    # the run's age counts from its first commit (0:01): 5 minutes later all 10 are recent
    per_min, timeline = dd.throughput(records, now=T0 + dt.timedelta(minutes=5, seconds=1))
    assert per_min == pytest.approx(10 / 5.0)
    # a run younger than 5 minutes is binned by 10 s: commits at 0:00, 0:30, ... 4:30 (+1 s)
    assert timeline["commits"].sum() == 10 and timeline["width"].iloc[0] == pytest.approx(1 / 6)
    assert timeline["minute"][timeline["commits"] > 0].tolist() == pytest.approx([i * 0.5 for i in range(10)])
    assert timeline["per_minute"].max() == pytest.approx(6.0)
    assert dd.latest_qc(records, n=2) == ["S9", "S8"]


def test_biomarker_values_split_manual_automatic():
    records = {("A", "quantify"): _rec("committed", 0, summary={"sources": {
        "manual": {"sulpeak": 3.0, "tlg": None}, "threshold_41pct": {"sulpeak": 4.0, "tlg": 10.0}}})}
    vals = dd.biomarker_values(records)
    assert vals["sulpeak"]["manual"].tolist() == [3.0] and vals["sulpeak"]["automatic"].tolist() == [4.0]
    assert vals["tlg"]["manual"].size == 0


def test_document_on_finished_store(tmp_path):
    store = make_store(tmp_path / "s.zarr", patients=3)
    doc = Document()
    dash = make_document(doc, store.url, dask_dashboard="http://127.0.0.1:8787/status")
    dash._next_due = 0.0  # poll again now (the first poll ran inside make_document)
    snap = dash.update()
    assert snap is not None and snap.done == len(store.stage_records())
    assert 'data-failed="1"' in dash.status.text
    assert dash.fail_src.data["reason"] == ["ORGAN_MASK_EMPTY"]
    assert "127.0.0.1:8787" in dash.link.text
    assert "data:image/png;base64," in dash.qc.text
    assert sum(dash.hist_src["sulpeak"].data["manual"]) == 6
    assert np.isclose(sum(dash.progress_src.data["committed"]), snap.done - 1)
    assert doc.roots and doc.title == "petcohort run monitor"


def test_port_in_use_and_bad_store(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        with pytest.raises(InputError) as exc:
            check_port(port)
        assert exc.value.reason == "PORT_IN_USE"
        store = make_store(tmp_path / "s.zarr", patients=1, broken=False)
        with pytest.raises(InputError) as exc:
            serve(store.url, port=port, block=False)
        assert exc.value.reason == "PORT_IN_USE"
    with pytest.raises(InputError) as exc:
        check_port(70000)
    assert exc.value.reason == "BAD_PORT"
    with pytest.raises(StoreError):
        serve(tmp_path / "nothing-here", port=port, block=False)


def test_document_on_empty_store(tmp_path):
    from petcohort.storage.store import CohortStore

    store = CohortStore.create(tmp_path / "empty.zarr")
    dash = make_document(Document(), store.url)
    assert 'data-done="0" data-total="0"' in dash.status.text
    assert dash.fail_src.data["study"] == [] and "No QC MIPs yet" in dash.qc.text
    assert "not known" in dash.link.text


def test_poll_error_is_shown_not_raised(tmp_path, monkeypatch):
    store = make_store(tmp_path / "s.zarr", patients=1, broken=False)
    dash = make_document(Document(), store.url)

    def boom():
        raise StoreError("MISSING_ARRAY", "record replaced while reading")

    monkeypatch.setattr(dash.store, "stage_records", boom)
    dash._next_due = 0.0
    assert dash.update() is None and "MISSING_ARRAY" in dash.status.text
