def test_it_reports_live_and_ready_with_database_and_redis(client, db):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "redis": "ok"}


def test_it_exposes_prometheus_metrics(client, db):
    body = client.get("/metrics").content.decode()
    assert "omniagent_inbound_events_total" in body
