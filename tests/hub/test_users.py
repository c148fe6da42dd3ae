"""People's accounts below the web layer: the first admin, the user rules, database sessions, and
the login throttle (account lockout, per-address refusal, unlock, disabled users, no user-name
enumeration), each on a migrated database with a clock the test moves."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

import pytest
from argon2 import PasswordHasher
from sqlalchemy import func, select

from hub.config import LoginSection
from hub.db.models import AuditEntry, LoginFailure, User, WebSession
from hub.identity.secrets import verify_password
from hub.identity.sessions import end_session, load_session, prune_sessions, start_session
from hub.identity.throttle import check_login, printable
from hub.identity.tokens import TokenStore, create_token
from hub.identity.users import (
    UserError,
    create_user,
    disable_user,
    enable_user,
    ensure_first_admin,
    find_user,
    get_user,
    set_password,
    state_of,
    unlock_user,
)
from hub.roles import Role
from tests.hub.conftest import ADMIN_PASSWORD, T0, USER_PASSWORD, hub_config

LIMITS = LoginSection(max_failures=3, lockout_s=600, max_failures_per_address=5, address_window_s=300)
HOUR = timedelta(hours=1)


@pytest.fixture
def alice(db):
    with db.transaction() as s:
        create_user(s, "alice", "operator", USER_PASSWORD, "test", T0)
    return "alice"


def attempt(db, name, password, at=T0, address="10.0.0.1", limits=LIMITS):
    with db.transaction() as s:
        return check_login(s, name, password, address, at, limits)


def audit_actions(db, actor):
    with db.session() as s:
        return [e.action for e in s.scalars(select(AuditEntry).where(AuditEntry.actor == actor))]


# --- the first admin and the rules ------------------------------------------------------------


def test_the_first_admin_comes_from_the_config_once(tmp_path, keys, db, caplog):
    config = hub_config(tmp_path, keys)
    with db.session() as s:
        admin = get_user(s, "admin")  # the app fixture made it, as `hub serve` does at start
        assert admin.role == "admin" and verify_password(admin.password_hash, ADMIN_PASSWORD)
        assert admin.password_hash.startswith("$argon2id$") and ADMIN_PASSWORD not in admin.password_hash
        assert ensure_first_admin(s, config, T0) is None  # users exist: nothing happens
        assert s.scalar(select(func.count(User.id))) == 1
        s.delete(admin)
        s.flush()
        assert ensure_first_admin(s, hub_config(tmp_path, keys, admin_username="boss"), T0) == "boss"
        s.rollback()
        s.delete(get_user(s, "admin"))
        s.flush()
        with caplog.at_level(logging.WARNING):
            assert ensure_first_admin(s, hub_config(tmp_path, keys, admin_password=None), T0) is None
        assert "no_users" in caplog.text and "leukonet hub users add" in caplog.text
        assert s.scalar(select(func.count(User.id))) == 0


@pytest.mark.parametrize(
    ("name", "role", "password", "reason"),
    [
        ("bad name", "viewer", USER_PASSWORD, "invalid_name"),
        ("x" * 65, "viewer", USER_PASSWORD, "invalid_name"),
        ("bob", "trainer", USER_PASSWORD, "invalid_role"),
        ("bob", "root", USER_PASSWORD, "invalid_role"),
        ("bob", "viewer", "short", "weak_password"),
        ("bob", "viewer", "change-me-to-64-random-characters", "weak_password"),
        ("bob", "viewer", "y" * 1025, "weak_password"),
        ("ALICE", "viewer", USER_PASSWORD, "exists"),
    ],
)
def test_user_rules_name_the_problem(db, alice, name, role, password, reason):
    with db.transaction() as s, pytest.raises(UserError) as refused:
        create_user(s, name, role, password, "test", T0)
    assert refused.value.reason == reason
    assert password not in refused.value.message  # a refused password is never echoed


def test_the_last_enabled_admin_cannot_be_disabled(db):
    with db.transaction() as s:
        with pytest.raises(UserError, match="last enabled admin") as refused:
            disable_user(s, get_user(s, "admin"), "test", T0)
        assert refused.value.reason == "last_admin"
        create_user(s, "second", "admin", USER_PASSWORD, "test", T0)
        disable_user(s, get_user(s, "admin"), "test", T0)
        assert state_of(get_user(s, "admin"), T0) == "disabled"


# --- sessions ----------------------------------------------------------------------------------


def test_sessions_live_until_logout_expiry_or_disable(db, alice):
    with db.transaction() as s:
        user = get_user(s, "alice")
        sid = start_session(s, user, "10.0.0.1", T0)
        other = start_session(s, user, "10.0.0.2", T0)
    with db.session() as s:
        stored = s.scalars(select(WebSession.session_hash)).all()
        assert sid not in stored and len(stored) == 2  # only hashes are kept
        me = load_session(s, sid, T0 + HOUR, 12 * HOUR)
        assert (me.username, me.role, me.get_id()) == ("alice", Role.OPERATOR, sid)
        assert load_session(s, "forged" + sid, T0, 12 * HOUR) is None
        assert load_session(s, sid, T0 + 12 * HOUR, 12 * HOUR) is None  # expired: refused and deleted
        assert s.scalar(select(func.count(WebSession.id))) == 1
    with db.transaction() as s:
        assert end_session(s, other) and not end_session(s, other)
    with db.transaction() as s:
        sid = start_session(s, get_user(s, "alice"), "10.0.0.1", T0)
        disable_user(s, get_user(s, "alice"), "test", T0)
    with db.session() as s:
        assert load_session(s, sid, T0, 12 * HOUR) is None
    with db.transaction() as s:
        start_session(s, get_user(s, "admin"), "", T0 - 13 * HOUR)
        assert prune_sessions(s, T0, 12 * HOUR) == 1


def test_a_new_password_ends_sessions_and_personal_tokens_of_that_user_only(db, alice):
    store = TokenStore(db)
    with db.transaction() as s:
        alice_row, admin_row = get_user(s, "alice"), get_user(s, "admin")
        sid = start_session(s, alice_row, "", T0)
        admin_sid = start_session(s, admin_row, "", T0)
        mine = create_token(s, name="laptop", role=Role.OPERATOR, actor="alice", now=T0, user_id=alice_row.id)
        service = create_token(s, name="ci", role=Role.TRAINER, actor="admin", now=T0)
    assert store.authenticate(mine.value, T0).name == "alice"
    with db.transaction() as s:
        ended = set_password(s, get_user(s, "alice"), "a brand new password!", "admin", T0)
    assert (ended.sessions, ended.tokens) == (1, 1)
    assert store.authenticate(mine.value, T0) is None
    assert store.authenticate(service.value, T0).name == "ci"
    with db.session() as s:
        assert load_session(s, sid, T0, HOUR) is None
        assert load_session(s, admin_sid, T0, HOUR).username == "admin"
        assert verify_password(get_user(s, "alice").password_hash, "a brand new password!")
    assert "user.password_reset" in audit_actions(db, "admin")


# --- the throttle -------------------------------------------------------------------------------


def test_lockout_after_n_wrong_passwords_then_unlock(db, alice):
    for i in range(LIMITS.max_failures):
        assert attempt(db, "alice", f"wrong {i}").reason == "wrong"
    with db.session() as s:
        user = get_user(s, "alice")
        assert state_of(user, T0) == "locked" and user.locked_until == T0 + timedelta(seconds=600)
    # locked: the right password is told so (and until when), a wrong one still reads "wrong"
    locked = attempt(db, "alice", USER_PASSWORD, at=T0 + timedelta(seconds=60))
    assert (locked.reason, locked.until) == ("locked", T0 + timedelta(seconds=600))
    assert attempt(db, "alice", "wrong again", at=T0 + timedelta(seconds=61)).reason == "wrong"
    with db.session() as s:
        assert get_user(s, "alice").locked_until == T0 + timedelta(seconds=600)  # not extended
    assert attempt(db, "alice", USER_PASSWORD, at=T0 + timedelta(seconds=601), address="10.0.0.2").ok
    actions = audit_actions(db, "alice")
    assert actions.count("login.failed") == 4 and actions.count("login.locked") == 1
    assert "login.refused" in actions and actions[-1] == "login.ok"

    for i in range(LIMITS.max_failures):
        attempt(db, "alice", f"wrong {i}", at=T0 + HOUR, address="10.0.0.3")
    assert attempt(db, "alice", USER_PASSWORD, at=T0 + HOUR, address="10.0.0.4").reason == "locked"
    with db.transaction() as s:
        unlock_user(s, get_user(s, "alice"), "admin", T0 + HOUR)
    assert attempt(db, "alice", USER_PASSWORD, at=T0 + HOUR, address="10.0.0.4").ok


def test_a_success_resets_the_count_of_wrong_passwords(db, alice):
    for _ in range(LIMITS.max_failures - 1):
        attempt(db, "alice", "wrong")
    assert attempt(db, "alice", USER_PASSWORD).ok
    for _ in range(LIMITS.max_failures - 1):
        attempt(db, "alice", "wrong", address="10.0.0.9")
    assert attempt(db, "alice", USER_PASSWORD, address="10.0.0.9").ok
    with db.session() as s:
        assert get_user(s, "alice").last_login_at == T0


def test_an_address_with_too_many_failures_is_refused_before_any_password_check(db, alice):
    names = ["nobody", "alice", "admin", "ghost", "admin"]  # failures over several names count together
    for name in names:
        assert attempt(db, name, "wrong").reason == "wrong"
    refused = attempt(db, "alice", USER_PASSWORD, at=T0 + timedelta(seconds=10))
    assert (refused.reason, refused.until) == ("throttled", T0 + timedelta(seconds=300))
    assert attempt(db, "alice", USER_PASSWORD, at=T0 + timedelta(seconds=10), address="10.0.0.2").ok
    with db.session() as s:
        assert get_user(s, "alice").failed_logins == 0  # a throttled attempt does not touch the account
        assert s.scalar(select(func.count(LoginFailure.id))) == len(names)
    assert attempt(db, "alice", USER_PASSWORD, at=T0 + timedelta(seconds=301)).ok
    with db.session() as s:  # rows older than the window are pruned on the next attempt
        assert s.scalar(select(func.count(LoginFailure.id))) == 0


def test_disabled_users_are_refused_and_only_the_right_password_learns_why(db, alice):
    with db.transaction() as s:
        disable_user(s, get_user(s, "alice"), "admin", T0)
    assert attempt(db, "alice", "wrong").reason == "wrong"
    assert attempt(db, "alice", USER_PASSWORD).reason == "disabled"
    with db.transaction() as s:
        enable_user(s, get_user(s, "alice"), "admin", T0)
    assert attempt(db, "alice", USER_PASSWORD).ok


def test_unknown_users_cost_an_argon2_check_too(db, alice):
    def median(name: str) -> float:
        times = []
        for i in range(3):
            start = time.perf_counter()
            attempt(db, name, "wrong", address=f"10.1.0.{i}{name[0]}", limits=LoginSection())
            times.append(time.perf_counter() - start)
        return sorted(times)[1]

    known, unknown = median("alice"), median("zed")
    # without the dummy hash an unknown name answers ~50x faster than a known one
    assert unknown > 0.3 * known, (known, unknown)


def test_hashes_made_with_old_parameters_are_renewed_at_login(db, alice):
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(USER_PASSWORD)
    with db.transaction() as s:
        get_user(s, "alice").password_hash = weak
    assert attempt(db, "alice", USER_PASSWORD).ok
    with db.session() as s:
        renewed = get_user(s, "alice").password_hash
    assert renewed != weak and "m=65536" in renewed and verify_password(renewed, USER_PASSWORD)


def test_odd_names_are_recorded_safely(db):
    odd = "adm\x00in\n" + "é" * 100
    assert attempt(db, odd, "x" * 5000).reason == "wrong"
    assert printable(odd) == "adm?in?" + "é" * 57
    with db.session() as s:
        assert find_user(s, odd) is None
        failure = s.scalar(select(LoginFailure))
        assert failure.username == printable(odd) and len(failure.username) == 64
