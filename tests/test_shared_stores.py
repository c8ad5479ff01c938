"""The stores every node must share (teams and their keys, hyper-admins, the OAuth2 signing
secret), on both backends: SQLite (``data/admin.db``, the default) and PostgreSQL (a real server,
tests/services.py; a database of its own per test). Two instances on one store stand for two nodes."""
from __future__ import annotations

import sqlite3
import time

import pytest

from ingest.auth import AuthError, PushAuth
from pushlake import tokens
from pushlake.hyperadmins import HyperAdmins
from pushlake.teams import SCHEMA, Conflict, Invalid, NotFound, QuotaExceeded, TeamError, Teams, hash_key
from tests.services import backend_url

PASSWORD = "Very-secret-12"


@pytest.fixture(params=["sqlite", "postgresql"])
def admin_url(request):
    """``None`` (admin.db in the data directory) or the URL of a fresh PostgreSQL database."""
    return backend_url(request, "adm_")


@pytest.fixture
def node(tmp_path, admin_url):
    """``node(kind)``: a new instance (another connection: another node) of Teams, HyperAdmins or
    PushAuth on the test's store. Each node has its own data directory on PostgreSQL (nothing of
    the shared stores may live in files there), the same one on SQLite."""
    opened = []

    def open_(kind=Teams, **kw):
        data = tmp_path if admin_url is None else tmp_path / f"node{len(opened)}"
        opened.append(kind(data, url=admin_url, **kw))
        return opened[-1]
    yield open_
    for o in opened:
        o.close()


def test_create_get_all(node):
    t = node()
    out = t.create("acme")
    assert out["teamId"] == "acme" and out["pushApiKey"].startswith("pk_") and out["adminApiKey"].startswith("ak_")
    t.create("globex")
    row = node().get("acme")  # read by another node
    assert row.enabled and row.push_key_hash == hash_key(out["pushApiKey"])
    assert row.admin_key_hash == hash_key(out["adminApiKey"])
    assert isinstance(row.created_at, float) and abs(row.created_at - time.time()) < 60
    assert row.keys_issued_at == row.created_at  # full precision kept (not PostgreSQL's 4-byte REAL)
    assert [r.team_id for r in t.all()] == ["acme", "globex"]
    assert t.get("nobody") is None
    assert t.id_problems() == []


def test_duplicates_and_case_twins_are_refused(node):
    a, b = node(), node()
    a.create("acme")
    with pytest.raises(Conflict, match="already exists") as e:
        b.create("acme")
    assert e.value.status == 409
    with pytest.raises(Conflict, match="only by case"):
        b.create("ACME")
    with pytest.raises(Invalid):
        b.create("bad/id")
    assert [r.team_id for r in a.all()] == ["acme"]
    b.create("other")  # the store still takes writes after a refusal (no transaction left aborted)


def test_a_unique_violation_is_a_conflict(node, monkeypatch):
    """Two nodes passing the check at once: the primary key decides, and the loser gets 409."""
    t = node()
    t.create("acme")
    real = t.db.execute

    def skip_check(sql, params=()):
        if sql.startswith("SELECT team_id FROM teams WHERE lower"):
            return real("SELECT team_id FROM teams WHERE false")
        return real(sql, params)
    monkeypatch.setattr(t.db, "execute", skip_check)
    with pytest.raises(Conflict, match="already exists"):
        t.create("acme")
    monkeypatch.undo()
    assert len(t.all()) == 1
    t.create("globex")


def test_quota(node):
    a, b = node(), node()
    a.create("t1", quota=2)
    b.create("t2", quota=2)
    with pytest.raises(QuotaExceeded) as e:
        a.create("t3", quota=2)
    assert e.value.status == 429


def test_disable_keeps_hashes_and_enable_rotates_keys(node):
    a, b = node(), node()
    first = a.create("acme")
    assert b.set_status("acme", "DISABLED") == {"status": "DISABLED"}
    row = a.get("acme")
    assert not row.enabled and row.push_key_hash == hash_key(first["pushApiKey"])
    with pytest.raises(Conflict):
        a.set_status("acme", "DISABLED")
    again = a.set_status("acme", "ENABLED")
    row = b.get("acme")
    assert row.enabled and row.push_key_hash == hash_key(again["pushApiKey"]) != hash_key(first["pushApiKey"])
    assert row.admin_key_hash == hash_key(again["adminApiKey"]) and row.keys_issued_at > row.created_at
    with pytest.raises(NotFound):
        a.set_status("nobody", "DISABLED")
    with pytest.raises(TeamError):
        a.set_status("acme", "MAYBE")


def test_key_lookup_and_revocation_across_nodes(node):
    """A key revoked on one node stops working on another within its reload interval."""
    admin = node()
    keys = admin.create("acme")
    receiver = node(PushAuth)
    push = f"Bearer {keys['pushApiKey']}"
    assert receiver.authenticate(push) == "acme"
    assert receiver.by_admin_key(keys["adminApiKey"]).team_id == "acme"
    generation = receiver.current_generation()
    time.sleep(receiver.check_every * 2)
    assert receiver.current_generation() == generation  # nothing changed: no reload
    admin.set_status("acme", "DISABLED")
    time.sleep(receiver.check_every * 2)
    with pytest.raises(AuthError) as e:
        receiver.authenticate(push)
    assert e.value.status == 403
    new = admin.set_status("acme", "ENABLED")
    time.sleep(receiver.check_every * 2)
    with pytest.raises(AuthError) as e:
        receiver.authenticate(push)  # the old key was replaced
    assert e.value.status == 401
    assert receiver.authenticate(f"Bearer {new['pushApiKey']}") == "acme"
    assert receiver.current_generation() > generation


def test_change_detection_across_instances(node):
    a, b = node(), node()
    v = b.changes()
    assert b.changes() == v  # nothing changed
    a.create("acme")
    v2 = b.changes()
    assert v2 != v
    a.set_status("acme", "DISABLED")
    assert b.changes() != v2
    v3 = b.changes()
    h = node(HyperAdmins)
    h.create("root", "Ro", "Ot", PASSWORD)  # hyper-admins count: they drop the remembered logins
    assert b.changes() != v3


def test_hyperadmins_create_check_remove(node):
    a, b = node(HyperAdmins, quota=2), node(HyperAdmins, quota=2)
    assert a.create("root", "Ro", "Ot", PASSWORD) == {"userId": "root", "firstname": "Ro", "lastname": "Ot"}
    assert b.verify("root", PASSWORD) and not b.verify("root", PASSWORD + "x") and not b.verify("nobody", PASSWORD)
    with pytest.raises(Conflict):
        b.create("root", "A", "B", PASSWORD)
    with pytest.raises(Invalid):
        b.create("weak", "A", "B", "short")
    b.create("second", "A", "B", PASSWORD)
    with pytest.raises(QuotaExceeded):
        a.create("third", "A", "B", PASSWORD)
    assert [h["userId"] for h in a.list()] == ["root", "second"]
    b.delete("root")
    assert not a.verify("root", PASSWORD)
    with pytest.raises(NotFound):
        a.delete("root")
    assert [h["userId"] for h in b.list()] == ["second"]


def test_teams_and_hyperadmins_share_one_store(node):
    t, h = node(), node(HyperAdmins)
    t.create("acme")
    h.create("root", "Ro", "Ot", PASSWORD)
    assert node().get("acme") and node(HyperAdmins).verify("root", PASSWORD)


def test_the_signing_secret_is_shared(node, admin_url, tmp_path):
    one, two = node(PushAuth), node(PushAuth)
    assert one.secret == two.secret and len(one.secret) == 32
    node().create("acme")
    token, _ = tokens.issue(one.secret, "acme", 1.0, 60)
    assert tokens.check(two.secret, token) == ("acme", 1.0)
    if admin_url is None:
        assert (tmp_path / "oauth.secret").read_text().strip() == one.secret.hex()  # as before
    else:
        assert not list(tmp_path.rglob("oauth.secret"))  # nothing of the shared stores in files
        assert not list(tmp_path.rglob("admin.db"))


def test_an_existing_admin_db_opens_unchanged(tmp_path):
    """SQLite: the file an older release made opens as it is; its schema text is the same."""
    con = sqlite3.connect(tmp_path / "admin.db")
    con.executescript(SCHEMA)
    con.execute("INSERT INTO teams VALUES ('old', 'ENABLED', 1.5, 'p', 'a', 1.5)")
    con.commit()
    con.close()
    t = Teams(tmp_path)
    assert t.get("old").created_at == 1.5 and t.db.dialect == "sqlite"
    sql = t.con.execute("SELECT sql FROM sqlite_master WHERE name = 'teams'").fetchone()[0]
    assert sql.split() == SCHEMA.strip().rstrip(";").replace("IF NOT EXISTS ", "").split()
    t.close()


def test_an_unknown_url_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unsupported"):
        Teams(tmp_path, url="mysql://x@y/z")
