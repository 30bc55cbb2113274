"""Raw identifiers (PatientID, PatientName, StudyInstanceUID, source folder names) never reach the
store paths, stage records, Dask task keys, logs, tables, the report or the dashboard."""
from __future__ import annotations

import datetime as dt
import logging
import re
from pathlib import Path

import numpy as np

SECRET_ID = "SYN-SECRET-4242"
SECRET_NAME = "Doe^Jane"
SECRET_UID = "1.2.826.0.1.4242"
SECRETS = (SECRET_ID, SECRET_NAME, "Doe", "Jane", SECRET_UID, "4242")


def _write_dicom_study(root: Path, t0: dt.datetime, uid: str, *, seed: int, hot: float) -> None:
    from petcohort.storage.dicom_write import write_ct_series, write_pet_series

    rng = np.random.default_rng(seed)
    pet = rng.uniform(0.5, 1.5, (12, 8, 10))
    pet[6:9, 3:6, 3:6] = hot  # a lesion the threshold stages find
    ct = np.full(pet.shape, 40.0)
    patient = {"id": SECRET_ID, "name": SECRET_NAME, "weight_kg": 70.0, "height_m": 1.64, "sex": "F"}
    scan = {"acquisition_datetime": t0, "injection_datetime": t0 - dt.timedelta(minutes=60), "dose_bq": 3.0e8,
            "half_life_s": 6586.2, "frame_duration_s": 120.0, "study_uid": uid, "site": "Site A",
            "manufacturer": "GE", "model": "Discovery MI"}
    # the folder names carry the raw identifiers too, as real exports often do
    folder = root / f"{SECRET_ID}_{SECRET_NAME.replace('^', '_')}" / t0.strftime("%Y%m%d")
    geo = {"spacing": (4.0, 4.0, 4.0), "origin": (0.0, 0.0, 0.0)}
    write_pet_series(folder / "PET", pet, patient=patient, scan=scan, **geo)
    write_ct_series(folder / "CT", ct, patient=patient, scan=scan, **geo)


# Long base64 runs (embedded PNGs, Bokeh's binary arrays) are pixel data, not text: a 3-letter secret
# turns up in ~100 kB of base64 by chance about half the time (CI saw 'Doe' inside a MIP), so they are
# cut out before the text is searched. An identifier burnt into pixels is not what this test checks.
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{64,}={0,2}")


# A secret counts when it stands alone (not inside a longer run of letters or digits): the short
# pieces ('4242', 'Doe') otherwise turn up by chance in timings, hashes and words (CI saw '4242' in
# 'seconds': 0.042427). Real leaks keep their separators: 'SYN-SECRET-4242', '1.2.826.0.1.4242',
# 'Doe^Jane', 'Doe_Jane'.
_SECRET_RES = [re.compile(rf"(?<![A-Za-z0-9]){re.escape(s)}(?![A-Za-z0-9])") for s in SECRETS]


def _clean(text: str, where: str) -> None:
    text = _BASE64_RUN.sub("<base64>", text)
    for secret, pattern in zip(SECRETS, _SECRET_RES):
        found = pattern.search(text)
        assert found is None, f"{secret!r} found in {where}: ...{text[max(0, found.start() - 60):found.end() + 60]}..."


def test_secret_matching_ignores_chance_digits_but_not_leaks():
    for leak in ("P-SYN-SECRET-4242", "uid 1.2.826.0.1.4242", "name Doe^Jane", "/src/SYN-SECRET-4242_Doe_Jane/x"):
        assert any(p.search(leak) for p in _SECRET_RES), leak
    for chance in ("'seconds': 0.042427", "hash f02a4242bc", "Does it", "Janet"):
        assert not any(p.search(chance) for p in _SECRET_RES), chance


def test_no_raw_identifier_anywhere(tmp_path, caplog):
    from bokeh.document import Document
    from bokeh.embed import file_html
    from bokeh.resources import INLINE
    from distributed import Client
    from distributed.diagnostics.plugin import SchedulerPlugin

    from petcohort.pipelines.dashboard import make_document
    from petcohort.pipelines.ingest import ingest_tree
    from petcohort.pipelines.report import write_report
    from petcohort.pipelines.run import run_cohort
    from petcohort.storage.store import CohortStore

    caplog.set_level(logging.DEBUG)
    src = tmp_path / "src"
    _write_dicom_study(src, dt.datetime(2024, 2, 20, 11, 0), SECRET_UID, seed=1, hot=8.0)
    _write_dicom_study(src, dt.datetime(2024, 4, 10, 9, 30), SECRET_UID + ".2", seed=2, hot=3.0)
    store_url = tmp_path / "store.zarr"
    result = ingest_tree(src, store_url)
    assert len(result["ingested"]) == 2, result
    store = CohortStore.open(store_url, mode="r")
    patient_key = store.pseudonym(SECRET_ID)
    assert all(k.startswith(patient_key) for k in store.study_keys())

    class Keys(SchedulerPlugin):  # every task key the scheduler sees
        name = "privacy-task-keys"

        def __init__(self):
            self.keys: set[str] = set()

        def transition(self, key, start, finish, *args, **kwargs):
            self.keys.add(str(key))

    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        client.register_plugin(Keys())  # a copy lives on the scheduler
        run_cohort(store_url, client=client, out=tmp_path / "out")
        task_keys = client.run_on_scheduler(lambda dask_scheduler: sorted(
            dask_scheduler.plugins[Keys.name].keys))
    assert task_keys, "no task keys recorded"
    _clean(" ".join(task_keys), "Dask task keys")

    report = write_report(store_url, tmp_path / "out")
    text = report.read_text()
    assert patient_key in text  # the report names the patient ...
    _clean(text, "report.html")  # ... by pseudonym only
    for table in (tmp_path / "out" / "tables").glob("*.csv"):
        _clean(table.read_text(), f"table {table.name}")

    doc = Document()
    dash = make_document(doc, store_url)
    assert dash.status.text  # filled by the first poll inside make_document
    page = file_html(doc.roots[0], INLINE, "dashboard")
    assert "data-done" in page and "data:image/png;base64" in page  # the page holds the live data
    _clean(page, "dashboard page")

    records = store.stage_records()
    assert records
    _clean(repr(sorted(records)) + repr(list(records.values())), "stage records and keys")
    for path in Path(store_url).rglob("*"):
        _clean(str(path.relative_to(store_url)), "store paths")
    for key in store.study_keys():
        _clean(repr(store.study_attrs(key)), f"attrs of {key}")
    _clean(caplog.text, "logs")
