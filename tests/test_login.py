"""The login resists guessing: lockouts per user name and per address, hashed accounts from the command
line, a file or the environment, and the lockout live in front of Gradio's ``POST /login``."""
from __future__ import annotations

import logging
import threading

import pytest

from calibprompt.app.login import (
    AUTH_ENV,
    LoginThrottle,
    PasswordBook,
    collect_credentials,
    guarded_launch_kwargs,
    parse_accounts,
    refusal_message,
)

MINUTE = 60.0


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def attempt(throttle: LoginThrottle, user: str, address: str, succeeded: bool) -> float:
    """One sign-in as the guard makes it: the wait it was refused with, or 0 once it was let through."""
    wait = throttle.begin(user, address)
    if wait == 0:
        throttle.finish(user, address, succeeded)
    return wait


@pytest.fixture()
def clock():
    return FakeClock()


@pytest.fixture()
def throttle(clock):
    return LoginThrottle(clock=clock)


def test_five_failures_lock_and_the_sixth_is_refused_even_with_the_right_password(throttle, clock):
    for _ in range(5):
        assert attempt(throttle, "alice", "10.0.0.1", False) == 0
    assert attempt(throttle, "alice", "10.0.0.1", True) == pytest.approx(MINUTE)
    clock.advance(59)
    assert attempt(throttle, "alice", "10.0.0.1", True) == pytest.approx(1)
    clock.advance(1)
    assert attempt(throttle, "alice", "10.0.0.1", True) == 0  # unlocked after the period


def test_lockouts_grow_per_key_and_are_capped(clock):
    throttle = LoginThrottle(clock=clock, max_lock=8 * MINUTE)
    periods = []
    for _ in range(6):
        for _ in range(5):
            assert attempt(throttle, "alice", "10.0.0.1", False) == 0
        periods.append(throttle.begin("alice", "10.0.0.1"))
        clock.advance(periods[-1])
    assert periods == [MINUTE, 2 * MINUTE, 4 * MINUTE, 8 * MINUTE, 8 * MINUTE, 8 * MINUTE]


def test_failures_older_than_the_window_are_forgotten(throttle, clock):
    for _ in range(4):
        attempt(throttle, "alice", "10.0.0.1", False)
    clock.advance(10 * MINUTE + 1)
    for _ in range(4):
        attempt(throttle, "alice", "10.0.0.1", False)
    assert throttle.begin("alice", "10.0.0.1") == 0


def test_one_address_guessing_many_users_is_locked(throttle):
    for number in range(5):
        assert attempt(throttle, f"user{number}", "10.0.0.9", False) == 0
    assert attempt(throttle, "alice", "10.0.0.9", True) == pytest.approx(MINUTE)  # a new name, same address
    assert attempt(throttle, "alice", "10.0.0.1", True) == 0  # alice from elsewhere is not locked


def test_one_user_guessed_from_many_addresses_is_locked(throttle):
    for number in range(5):
        assert attempt(throttle, "alice", f"10.0.1.{number}", False) == 0
    assert attempt(throttle, "alice", "10.0.2.1", True) == pytest.approx(MINUTE)
    assert attempt(throttle, "bob", "10.0.2.1", True) == 0


def test_a_success_resets_the_users_count_but_not_the_addresss(throttle):
    for _ in range(4):
        attempt(throttle, "alice", "10.0.0.1", False)
    attempt(throttle, "alice", "10.0.0.1", True)
    for _ in range(4):  # alice's count started again: four more failures do not lock her
        attempt(throttle, "alice", "10.0.0.2", False)
    assert throttle.begin("alice", "10.0.0.3") == 0
    throttle.finish("alice", "10.0.0.3", None)
    assert attempt(throttle, "carol", "10.0.0.1", False) == 0  # the address's 5th failure: it locks
    assert throttle.begin("dave", "10.0.0.1") == pytest.approx(MINUTE)


def test_attempts_in_flight_count_so_parallel_guesses_cannot_overtake_the_lockout(throttle):
    admitted = [throttle.begin("alice", "10.0.0.1") for _ in range(8)]
    assert admitted[:5] == [0] * 5 and all(w > 0 for w in admitted[5:])
    for _ in range(5):
        throttle.finish("alice", "10.0.0.1", False)
    assert throttle.begin("alice", "10.0.0.1") == pytest.approx(MINUTE)


def test_the_throttle_is_thread_safe(clock):
    throttle = LoginThrottle(clock=clock, limit=1000)
    barrier = threading.Barrier(10)

    def guess(n):
        barrier.wait()
        for _ in range(100):
            attempt(throttle, "alice", f"10.0.0.{n}", False)

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert throttle.begin("alice", "10.0.0.99") == pytest.approx(MINUTE)  # locked at exactly the 1000th


def test_old_entries_are_pruned_and_memory_is_capped(clock):
    throttle = LoginThrottle(clock=clock, max_keys=50)
    for number in range(3):
        attempt(throttle, f"user{number}", "10.0.0.1", False)
    assert len(throttle) == 4  # three user names and one address
    clock.advance(10 * MINUTE + 1)
    assert throttle.prune() == 4 and len(throttle) == 0
    for number in range(500):  # a spray of names from many addresses stays within max_keys
        attempt(throttle, f"user{number}", f"10.1.{number // 250}.{number % 250}", False)
    assert len(throttle) <= 50


def test_a_lockout_is_remembered_until_forget_after(clock):
    throttle = LoginThrottle(clock=clock, forget_after=3600)
    for _ in range(5):
        attempt(throttle, "alice", "10.0.0.1", False)
    clock.advance(30 * MINUTE)
    assert throttle.prune() == 0  # the level is kept: the next lockout is longer
    clock.advance(31 * MINUTE)
    assert throttle.prune() == 2 and len(throttle) == 0


def test_the_lockout_logs_one_warning_with_user_and_address_never_the_password(throttle, caplog):
    with caplog.at_level(logging.WARNING, logger="calibprompt.app.login"):
        for _ in range(7):
            attempt(throttle, "alice", "10.0.0.1", False)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1
    assert "'alice'" in lines[0] and "10.0.0.1" in lines[0] and "1 min" in lines[0]


def test_the_refusal_says_how_long_to_wait():
    assert refusal_message(59) == "Too many failed sign-ins; try again in 1 minute."
    assert refusal_message(61) == "Too many failed sign-ins; try again in 2 minutes."


def test_passwords_are_kept_as_salted_hashes_and_checked():
    book = PasswordBook([("alice", "pw1"), ("bob", "pw1")])
    assert book.verify("alice", "pw1") and book.verify("bob", "pw1")
    assert not book.verify("alice", "pw2") and not book.verify("carol", "pw1") and not book.verify("", "")
    stored = book._hashes
    assert stored["alice"] != stored["bob"]  # the same password, different salts
    assert all(b"pw1" not in salt + digest for salt, digest in stored.values())
    assert "pw1" not in repr(vars(book))


def test_the_auth_file_skips_comments_and_blank_lines(tmp_path):
    path = tmp_path / "accounts"
    path.write_text("# team accounts\n\nalice:pw1\n  bob:p:w2  \n# carol:old\n", encoding="utf-8")
    assert collect_credentials(None, path, {}) == [("alice", "pw1"), ("bob", "p:w2")]


@pytest.mark.parametrize("line, problem", [("alice", "no ':'"), (":pw", "user name is empty"),
                                           ("alice:", "password is empty")])
def test_a_malformed_auth_file_line_is_named_without_its_password(tmp_path, line, problem):
    path = tmp_path / "accounts"
    path.write_text(f"# accounts\nbob:pw\n{line}\n", encoding="utf-8")
    with pytest.raises(SystemExit) as stop:
        collect_credentials(None, path, {})
    message = str(stop.value).replace(str(path), "PATH")
    assert "PATH, line 3" in message and problem in message and "user:password" in message
    assert "pw" not in message.replace("password", "")


def test_a_missing_auth_file_says_so(tmp_path):
    with pytest.raises(SystemExit, match="cannot read it"):
        collect_credentials(None, tmp_path / "nope", {})


def test_accounts_from_the_environment_and_all_sources_together(tmp_path):
    env = {AUTH_ENV: "carol:pw3, dave:pw4\nerin:pw5\n"}
    assert parse_accounts(env[AUTH_ENV], AUTH_ENV, commas=True) == [("carol", "pw3"), ("dave", "pw4"), ("erin", "pw5")]
    path = tmp_path / "accounts"
    path.write_text("bob:pw2\n", encoding="utf-8")
    assert collect_credentials([("alice", "pw1")], path, env) == [
        ("alice", "pw1"), ("bob", "pw2"), ("carol", "pw3"), ("dave", "pw4"), ("erin", "pw5")]
    assert collect_credentials(None, None, {AUTH_ENV: "  "}) is None
    with pytest.raises(SystemExit, match=f"{AUTH_ENV}, line 1"):
        collect_credentials(None, None, {AUTH_ENV: "carol:pw3,dave"})
    with pytest.raises(SystemExit, match="'alice' is given twice"):
        collect_credentials([("alice", "pw1")], None, {AUTH_ENV: "alice:other"})


def test_the_command_line_stops_on_a_malformed_auth_file_before_starting(tmp_path, monkeypatch):
    from calibprompt.app.launch import main

    path = tmp_path / "accounts"
    path.write_text("alice\n", encoding="utf-8")
    monkeypatch.delenv(AUTH_ENV, raising=False)
    with pytest.raises(SystemExit, match="line 1: no ':'"):
        main(["--auth-file", str(path)])
    with pytest.raises(SystemExit, match="--auth value 1 has an empty password"):
        main(["--auth", "alice:"])


def test_over_http_the_login_works_then_locks_with_429_and_logs_once(caplog):
    import gradio as gr
    import httpx

    with gr.Blocks() as demo:
        gr.Markdown("A small app behind the guarded login.")
    _, url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True,
                            **guarded_launch_kwargs([("alice", "right")]))
    try:
        with httpx.Client(base_url=url, timeout=30) as http, caplog.at_level(logging.WARNING):
            assert http.get("config").status_code == 401  # the route is guarded by Gradio's login
            ok = http.post("login", data={"username": "alice", "password": "right"})
            assert ok.status_code == 200 and ok.json() == {"success": True}  # the route is live
            statuses = []
            for _ in range(7):
                wrong = http.post("login", data={"username": "alice", "password": "wrong"})
                statuses.append(wrong.status_code)
            assert statuses == [400] * 5 + [429] * 2
            assert wrong.text == "Too many failed sign-ins; try again in 1 minute."
            assert wrong.headers["retry-after"] == "60"
            right = http.post("login", files={"username": (None, "alice"), "password": (None, "right")})
            assert right.status_code == 429  # the right password too, as the browser's form sends it
            assert http.get("gradio_api/info").status_code == 200  # other routes are untouched
    finally:
        demo.close()
    lines = [r.getMessage() for r in caplog.records
             if r.name == "calibprompt.app.login" and r.levelno == logging.WARNING]
    assert len(lines) == 1 and "'alice'" in lines[0] and "127.0.0.1" in lines[0]
    assert "wrong" not in lines[0] and "right" not in lines[0]
