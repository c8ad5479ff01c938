"""Who may read (pushlake/api/auth.py): logins are remembered, but never across a change of the
hyper-admins or teams that happened while their password was being checked."""
from __future__ import annotations

import base64

import pytest

from ingest.auth import PushAuth
from pushlake.api.auth import PasswordCheck, ReaderAuth
from pushlake.hyperadmins import HyperAdmins

PW = "PnsPYthv4N?zI%CK"


def basic(user: str, pw: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()


@pytest.fixture
def readers(tmp_path):
    admins = HyperAdmins(tmp_path)
    admins.create("jane@example.com", "Jane", "Doe", PW)
    teams = PushAuth(tmp_path)
    r = ReaderAuth(teams, tmp_path)
    yield r, admins
    r.close()
    teams.close()
    admins.close()


def test_a_checked_login_is_remembered(readers):
    r, _ = readers
    with pytest.raises(PasswordCheck) as e:
        r.reader(basic("jane@example.com", PW))
    assert r.remember(e.value, r.admins.verify(e.value.user, e.value.password)).name == "jane@example.com"
    assert r.reader(basic("jane@example.com", PW)).kind == "hyperadmin"  # no second check


def test_a_login_checked_while_the_admin_was_deleted_is_not_remembered(readers):
    r, admins = readers
    with pytest.raises(PasswordCheck) as e:
        r.reader(basic("jane@example.com", PW))
    ok = r.admins.verify(e.value.user, e.value.password)  # the (slow) check passes ...
    admins.delete("jane@example.com")                    # ... while another request deletes her
    r.teams.check_every = 0
    with pytest.raises(PasswordCheck):  # and a third request has seen the change already
        r.reader(basic("someone@example.com", "x"))
    r.remember(e.value, ok)
    with pytest.raises(PasswordCheck):  # checked again, and refused then
        r.reader(basic("jane@example.com", PW))
    assert not r.admins.verify("jane@example.com", PW)
