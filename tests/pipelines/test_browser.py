"""Headless-chromium checks of the report and the live dashboard (marked ``browser``)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from test_report import make_store, render_1000

pytestmark = pytest.mark.browser

SECTIONS = ("summary", "fig-mips", "fig-agreement", "fig-roc", "fig-trajectories", "table-segmentation",
            "table-agreement", "table-response", "table-delong", "table-percist", "table-percist-confusion",
            "table-suv-provenance")


def _run_store(url, *, broken_key_index: int = 1):
    """A tiny store whose study ``broken_key_index`` has a NaN PET (threshold fails IMAGE_NOT_FINITE)."""
    store = make_store(url, patients=4, records=False)
    key = store.study_keys()[broken_key_index]
    store.write_arrays(key, {"pet": np.full((12, 8, 10), np.nan, np.float32)})
    return store, key


def _run(url):
    from distributed import Client

    from petcohort.pipelines.run import run_cohort

    # threads only: the 2-core CI machine must not start worker processes for 8 tiny studies
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        return run_cohort(url, client=client)


def _errors(page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


def test_report_in_browser(tmp_path, browser, browser_out):
    from petcohort.pipelines.report import write_report

    store, broken = _run_store(tmp_path / "s.zarr")
    _run(store.url)
    path = write_report(store.url, tmp_path / "out")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = _errors(page)
    page.goto(Path(path).as_uri(), wait_until="load")
    load_ms = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
    for sid in SECTIONS:
        assert page.locator(f"section#{sid}").count() == 1, sid
    for sid in ("summary", "table-suv-provenance"):
        assert page.locator(f"section#{sid}").get_attribute("data-status") == "ok", sid
    # the tiny store has no organ masks (no PBI/PLI) and a broken study without QC MIP:
    # those sections draw what exists and say what is missing
    for sid in ("fig-mips", "fig-agreement", "fig-roc", "fig-trajectories"):
        assert page.locator(f"section#{sid}").get_attribute("data-status") in ("ok", "partial"), sid
    assert page.locator("section#fig-mips").get_attribute("data-status") == "partial"
    for fig in ("agreement-scatter", "roc-curves", "trajectories"):
        assert page.locator(f'img[data-figure="{fig}"]').count() == 1, fig
    assert page.locator('img[data-figure^="mip-"]').count() == 4
    # every image decoded (a broken data URI has naturalWidth 0)
    assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    for table in ("cohort_counts", "failures", "suv_provenance", "agreement_summary", "roc_summary"):
        assert page.locator(f'table[data-table="{table}"]').count() == 1, table
    assert broken in page.locator('table[data-table="failures"]').inner_text()
    assert "IMAGE_NOT_FINITE" in page.locator("section#summary").inner_text()
    page.screenshot(path=str(browser_out / "report.png"), full_page=True)
    page.close()
    assert errors == []
    print(f"report load event after {load_ms:.0f} ms, {path.stat().st_size / 1e6:.2f} MB")
    assert load_ms < 5000


@pytest.mark.slow
def test_1000_study_report_loads_fast(tmp_path, browser):
    path, _ = render_1000(tmp_path)
    page = browser.new_page()
    errors = _errors(page)
    page.goto(path.as_uri(), wait_until="load")
    load_ms = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
    assert page.locator('img[data-figure^="mip-"]').count() == 40
    page.close()
    print(f"1000-study report load event after {load_ms:.0f} ms")
    assert errors == [] and load_ms < 5000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(page) -> tuple[int, int, int]:
    loc = page.locator(".pc-status")
    return tuple(int(loc.get_attribute(a)) for a in ("data-done", "data-total", "data-failed"))


def test_dashboard_follows_a_run(tmp_path, browser, browser_out):
    store, broken = _run_store(tmp_path / "s.zarr")
    port = _free_port()
    cli = Path(sys.executable).with_name("petcohort")
    proc = subprocess.Popen([str(cli), "dashboard", "--store", store.url, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    page = browser.new_page(viewport={"width": 1280, "height": 1100})
    errors = _errors(page)
    try:
        deadline = time.monotonic() + 60
        while True:  # the server needs a few seconds to import bokeh and bind
            try:
                page.goto(f"http://127.0.0.1:{port}/", wait_until="load", timeout=5000)
                break
            except Exception:  # noqa: BLE001 - playwright raises its own Error until the port answers
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.5)
        page.wait_for_selector(".pc-status", timeout=30000)
        done0, total, _ = _status(page)
        assert done0 == 0 and total > 0
        result: dict = {}
        runner = threading.Thread(target=lambda: result.setdefault("summary", _run(store.url)))
        runner.start()
        seen = [done0]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            done, total, failed = _status(page)
            seen.append(done)
            if done == total and not runner.is_alive():
                break
            time.sleep(0.3)
        runner.join(timeout=60)
        assert seen[-1] == total and seen == sorted(seen) and len(set(seen)) >= 2, seen
        assert failed >= 1 and result["summary"].failed
        page.wait_for_selector("text=IMAGE_NOT_FINITE", timeout=10000)
        assert page.locator(f"text={broken}").count() >= 1
        page.wait_for_selector("[data-qc] img", timeout=10000)
        page.screenshot(path=str(browser_out / "dashboard.png"), full_page=True)
        assert not [e for e in errors if "favicon" not in e], errors
    finally:
        page.close()
        proc.terminate()
        proc.wait(timeout=20)
