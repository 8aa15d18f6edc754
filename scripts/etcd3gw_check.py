"""Drives a server through OpenStack's etcd3gw (the JSON gateway client):
every call it makes must work as against etcd. Usage:
    python etcd3gw_check.py HOST PORT
Prints "etcd3gw: ok" and exits 0, or raises."""

import sys
import threading

from etcd3gw.client import Etcd3Client


def main(host, port):
    c = Etcd3Client(host=host, port=int(port), timeout=10)
    assert c.api_path == "/v3/", c.api_path
    status = c.status()
    assert "leader" in status and "version" in status, status
    members = c.members()
    assert len(members) == 1 and members[0]["clientURLs"], members

    assert c.put("gw/a", "1")
    assert c.put("gw/b", b"2")
    assert c.get("gw/a") == [b"1"], c.get("gw/a")
    value, meta = c.get("gw/b", metadata=True)[0]
    assert value == b"2" and meta["key"] == b"gw/b" and int(meta["version"]) == 1, meta
    assert sorted(v for v, _ in c.get_prefix("gw/")) == [b"1", b"2"]
    assert c.get("gw/none") == []

    assert c.create("gw/c", "3")
    assert not c.create("gw/c", "again")
    assert c.replace("gw/c", "3", "4")
    assert not c.replace("gw/c", "3", "5")
    assert c.get("gw/c") == [b"4"]
    assert c.delete("gw/c")
    assert not c.delete("gw/c")

    lease = c.lease(ttl=30)
    assert c.put("gw/leased", "x", lease=lease)
    assert 0 < lease.ttl() <= 30, lease.ttl()
    assert lease.refresh() == 30
    assert lease.keys() == [b"gw/leased"], lease.keys()
    assert lease.revoke()
    assert c.get("gw/leased") == []

    lock = c.lock(ttl=30)
    assert lock.acquire()
    assert lock.is_acquired()
    assert lock.release()

    # A watch sees a put made after it started.
    events, cancel = c.watch("gw/w")
    writer = threading.Timer(0.5, lambda: c.put("gw/w", "seen"))
    writer.start()
    for event in events:
        assert event["kv"]["value"] == b"seen", event
        break
    cancel()
    writer.join()

    assert c.delete_prefix("gw/")
    assert c.get_prefix("gw/") == []
    print("etcd3gw: ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
