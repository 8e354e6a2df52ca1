"""Prefect flows run through Prefect's test harness (a temporary API and database)."""

from __future__ import annotations

import pandas as pd
import pytest


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_ingest_flow_cuts_a_snapshot_and_is_idempotent(prefect_harness, home, monkeypatch, tmp_path):
    from flows.ingest import ingest_flow

    monkeypatch.setenv("TUNELOOP_HOME", str(home))
    data = tmp_path / "drop.csv"
    pd.DataFrame(
        {
            "text": [f"where is my parcel number {i}" for i in range(12)] + ["", "reset my password"],
            "label": ["track_order"] * 12 + ["track_order", "reset_password"],
        }
    ).to_csv(data, index=False)

    first = ingest_flow(paths=[str(data)])
    assert first["snapshot"] == "snap-0001"
    assert (first["rows"], first["accepted"], first["quarantined"]) == (14, 13, 1)
    assert first["reasons"] == {"empty_text": 1}
    assert first["mlflow_run_id"]

    again = ingest_flow(paths=[str(data)])
    assert again["snapshot"] is None and again["accepted"] == 0
    assert again["skipped_files"] == [str(data)]
