"""The process-wide services `bitscape serve` uses: created once, without deadlock."""
import threading

from explorer.state import services


def test_get_runner_after_get_store_returns(tmp_path, monkeypatch):
    monkeypatch.setattr(services, "_store", None)
    monkeypatch.setattr(services, "_runner", None)
    monkeypatch.setattr(services, "_settings", {})
    services.configure(store_path=str(tmp_path / "s.sqlite"), workers=1)
    out = {}

    def work():
        out["store"] = services.get_store()
        out["runner"] = services.get_runner()

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "get_runner() deadlocked on the services lock"
    try:
        assert out["runner"].store is out["store"]
        assert services.get_runner() is out["runner"]
    finally:
        services.shutdown()
