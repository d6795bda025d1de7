"""The store on every backend: users, tasks, overlap, shown order, idempotency, append-only corrections."""

from __future__ import annotations

import os
import random
import stat
import threading
from collections import Counter, defaultdict
from datetime import timedelta
from pathlib import Path

import pytest

import rlhf.labeling.store as store_mod
from rlhf.labeling.store import Answer, Conflict, Forbidden, NotFound, Store, StoreError, TaskSpec


def pairwise(n: int, overlap: int, prefix: str = "p") -> list[TaskSpec]:
    return [TaskSpec("pairwise", f"{prefix}{i}", [f"{prefix}{i}-a", f"{prefix}{i}-b"], {"i": i}, overlap) for i in range(n)]


def answer_all(store: Store, user_id: int, rng: random.Random) -> list[int]:
    """Answer every task the user can get; returns the task ids in order."""
    seen = []
    while (shown := store.next_assignment(user_id, gold_rate=0.0, rng=rng)) is not None:
        seen.append(shown.task_id)
        store.submit(user_id, Answer(shown.assignment_id, f"c{shown.assignment_id}", choice="A", strength="better"))
    return seen


def test_users_invites_and_tokens(store: Store) -> None:
    new = store.create_user("alice", "labeler")
    assert store.invite_user(new.invite_token) == new.user  # looking does not use it up
    assert store.redeem_invite(new.invite_token) == new.user
    assert store.redeem_invite(new.invite_token) is None  # one-time
    assert store.redeem_invite("not-a-token") is None
    assert store.user_by_api_token(new.api_token) == new.user
    assert store.user_by_api_token(new.invite_token) is None
    again = store.new_invite("alice")
    assert store.redeem_invite(again) == new.user
    with pytest.raises(Conflict, match="already exists"):
        store.create_user("alice", "admin")
    with pytest.raises(StoreError, match="role"):
        store.create_user("bob", "boss")
    with pytest.raises(NotFound):
        store.new_invite("nobody")


def test_expired_invite_is_refused(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "INVITE_TTL", timedelta(seconds=-1))
    new = store.create_user("late", "labeler")
    assert store.invite_user(new.invite_token) is None
    assert store.redeem_invite(new.invite_token) is None


def test_add_tasks_deduplicates_and_validates(store: Store) -> None:
    ids, existing = store.add_tasks(pairwise(3, 2))
    assert len(ids) == 3 and existing == 0
    ids2, existing2 = store.add_tasks(pairwise(4, 2))
    assert len(ids2) == 1 and existing2 == 3
    with pytest.raises(StoreError, match="exactly 2 responses") as e:
        store.add_tasks([TaskSpec("pairwise", "p", ["a", "b", "c"])])
    assert e.value.field == "responses"
    with pytest.raises(StoreError, match="2..9"):
        store.add_tasks([TaskSpec("ranking", "p", [str(i) for i in range(10)])])
    with pytest.raises(StoreError, match="gold_ranks"):
        store.add_tasks([TaskSpec("ranking", "p", ["a", "b", "c"], gold_ranks=[1, 2])])
    assert len(store.tasks()) == 4  # the failed batches added nothing


def test_overlap_gives_each_task_to_n_distinct_labelers(store: Store) -> None:
    store.add_tasks(pairwise(5, 3))
    users = [store.create_user(f"u{n}", "labeler").user for n in range(5)]
    rng = random.Random(0)
    got = {u.id: answer_all(store, u.id, rng) for u in users}
    per_task: dict[int, list[int]] = defaultdict(list)
    for uid, tids in got.items():
        assert len(tids) == len(set(tids)), "a task was shown twice to the same labeler"
        for t in tids:
            per_task[t].append(uid)
    assert sorted(per_task) == [t.id for t in store.tasks()]
    assert all(len(uids) == 3 for uids in per_task.values())
    # FIFO: the first three labelers take everything, the others find nothing left.
    assert [len(got[u.id]) for u in users] == [5, 5, 5, 0, 0]
    p = store.progress(users[0].id)
    assert p["tasks"] == 5 and p["tasks_complete"] == 5 and p["my_judgments"] == 5 and p["my_available"] == 0


def test_open_assignment_comes_back_until_answered(store: Store) -> None:
    store.add_tasks(pairwise(2, 1))
    u = store.create_user("u", "labeler").user
    first = store.next_assignment(u.id)
    assert store.next_assignment(u.id) == first  # a reload shows the same task in the same order
    store.submit(u.id, Answer(first.assignment_id, "x", choice="tie"))
    second = store.next_assignment(u.id)
    assert second.task_id != first.task_id


def test_shown_order_is_random_recorded_and_mapped_back(store: Store) -> None:
    store.add_tasks(pairwise(40, 1) + [TaskSpec("ranking", "r", ["r0", "r1", "r2", "r3"], {}, 1)])
    u = store.create_user("u", "labeler").user
    rng = random.Random(1)
    orders = Counter()
    while (shown := store.next_assignment(u.id, gold_rate=0, rng=rng)) is not None:
        task = next(t for t in store.tasks() if t.id == shown.task_id)
        assert shown.responses == [task.responses[i] for i in shown.shown_order]
        if shown.kind == "pairwise":
            orders[tuple(shown.shown_order)] += 1
            rec, _ = store.submit(u.id, Answer(shown.assignment_id, f"c{shown.task_id}", choice="A", strength="much_better"))
            # "A" is the first response shown, whatever its index in the task.
            assert task.responses[rec.answer["better"]] == shown.responses[0]
            assert rec.raw == {"choice": "A", "strength": "much_better"}
        else:
            rec, _ = store.submit(u.id, Answer(shown.assignment_id, "rank", ranks=[1, 2, 2, 4]))
            for pos, r in enumerate([1, 2, 2, 4]):
                assert rec.answer["ranks"][shown.shown_order[pos]] == r
        assert rec.shown_order == shown.shown_order
    assert set(orders) == {(0, 1), (1, 0)} and min(orders.values()) >= 10  # both orders, roughly balanced


def test_same_client_id_is_stored_once(store: Store) -> None:
    store.add_tasks(pairwise(2, 1))
    u = store.create_user("u", "labeler").user
    a = store.next_assignment(u.id)
    r1, created1 = store.submit(u.id, Answer(a.assignment_id, "same", choice="B", strength="better"))
    r2, created2 = store.submit(u.id, Answer(a.assignment_id, "same", choice="B", strength="better"))
    assert (created1, created2) == (True, False) and r1 == r2
    assert len(store.judgments()) == 1
    b = store.next_assignment(u.id)
    with pytest.raises(Conflict, match="already used"):
        store.submit(u.id, Answer(b.assignment_id, "same", choice="A", strength="better"))


def test_corrections_append_and_supersede(store: Store) -> None:
    store.add_tasks(pairwise(1, 1))
    u = store.create_user("u", "labeler").user
    a = store.next_assignment(u.id)
    first, _ = store.submit(u.id, Answer(a.assignment_id, "1", choice="A", strength="better"))
    with pytest.raises(Conflict, match=f"supersedes={first.id}"):
        store.submit(u.id, Answer(a.assignment_id, "2", choice="B", strength="better"))
    fixed, _ = store.submit(u.id, Answer(a.assignment_id, "3", choice="B", strength="better", supersedes=first.id))
    assert fixed.supersedes_id == first.id
    with pytest.raises(Conflict):  # the first answer is no longer the current one
        store.submit(u.id, Answer(a.assignment_id, "4", choice="tie", supersedes=first.id))
    everything = store.judgments()
    assert [j.id for j in everything] == [first.id, fixed.id]
    assert everything[0].answer == first.answer  # the old row is untouched
    assert [j.id for j in store.judgments(current_only=True)] == [fixed.id]


def test_answers_are_validated(store: Store) -> None:
    store.add_tasks([TaskSpec("pairwise", "p", ["a", "b"], {}, 1), TaskSpec("ranking", "r", ["x", "y", "z"], {}, 1)])
    u = store.create_user("u", "labeler").user
    other = store.create_user("o", "labeler").user
    a = store.next_assignment(u.id)
    cases = [
        (Answer(a.assignment_id, "c", choice="A"), "strength"),
        (Answer(a.assignment_id, "c", choice="C"), "choice"),
        (Answer(a.assignment_id, "c", ranks=[1, 2]), "ranks"),
        (Answer(a.assignment_id, "c", choice="A", strength="better", skip_reason="x"), "skip_reason"),
        (Answer(a.assignment_id, "c"), "choice"),
        (Answer(a.assignment_id, "c", flag="boring"), "flag"),
        (Answer(a.assignment_id, "c", choice="tie", time_spent_ms=-1), "time_spent_ms"),
        (Answer(a.assignment_id, "c", choice="tie", supersedes=1), "supersedes"),
    ]
    for ans, field in cases:
        with pytest.raises(StoreError) as e:
            store.submit(u.id, ans)
        assert e.value.field == field, (ans, e.value)
    with pytest.raises(Forbidden):
        store.submit(other.id, Answer(a.assignment_id, "c", choice="tie"))
    with pytest.raises(NotFound):
        store.submit(u.id, Answer(99999, "c", choice="tie"))
    store.submit(u.id, Answer(a.assignment_id, "ok", choice="tie"))
    r = store.next_assignment(u.id)
    for ranks in ([1, 2], [0, 1, 2], [1, 2, 4], [True, 1, 2]):
        with pytest.raises(StoreError, match="ranks"):
            store.submit(u.id, Answer(r.assignment_id, "c", ranks=ranks))
    assert len(store.judgments()) == 1


def test_skip_frees_the_slot_and_flag_stops_serving(store: Store) -> None:
    store.add_tasks(pairwise(2, 1))
    u1, u2, u3 = (store.create_user(n, "labeler").user for n in ("u1", "u2", "u3"))
    a = store.next_assignment(u1.id)
    store.submit(u1.id, Answer(a.assignment_id, "s", skip_reason="cannot judge"))
    b = store.next_assignment(u2.id)
    assert b.task_id == a.task_id  # skipped: shown to someone else
    store.submit(u2.id, Answer(b.assignment_id, "f", flag="unsafe", note="harmful"))
    c = store.next_assignment(u3.id)
    assert c.task_id != a.task_id
    kinds = [j.kind for j in store.judgments()]
    assert kinds == ["skip", "flag"]


def test_unanswered_assignment_expires(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store.add_tasks(pairwise(1, 1))
    u1, u2 = (store.create_user(n, "labeler").user for n in ("u1", "u2"))
    assert store.next_assignment(u1.id) is not None
    assert store.next_assignment(u2.id) is None  # the slot is held
    monkeypatch.setattr(store_mod, "ASSIGNMENT_TTL", timedelta(0))
    assert store.next_assignment(u2.id) is not None


def test_gold_tasks_are_mixed_in_for_everyone(store: Store) -> None:
    store.add_tasks(pairwise(3, 1) + [TaskSpec("pairwise", "g", ["good", "bad"], {}, 1, gold_ranks=[1, 2])])
    gold_id = next(t.id for t in store.tasks() if t.gold_ranks)
    u1, u2 = (store.create_user(n, "labeler").user for n in ("u1", "u2"))
    first = store.next_assignment(u1.id, gold_rate=1.0)
    assert first.task_id == gold_id
    store.submit(u1.id, Answer(first.assignment_id, "g", choice="A", strength="better"))
    # Gold ignores overlap: the second labeler gets it too; with gold_rate 0 it never comes.
    assert store.next_assignment(u2.id, gold_rate=1.0).task_id == gold_id
    u3 = store.create_user("u3", "labeler").user
    seen = answer_all(store, u3.id, random.Random(0))
    assert gold_id not in seen


def test_concurrent_labelers_never_exceed_overlap(store: Store) -> None:
    store.add_tasks(pairwise(6, 3))
    users = [store.create_user(f"u{n}", "labeler").user for n in range(8)]
    taken: dict[int, list[int]] = defaultdict(list)
    lock = threading.Lock()
    errors = []

    def work(uid: int) -> None:
        try:
            got = answer_all(store, uid, random.Random(uid))
            with lock:
                for t in got:
                    taken[t].append(uid)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(u.id,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert {t: len(set(u)) for t, u in taken.items()} == {t.id: 3 for t in store.tasks()}
    assert len(store.judgments()) == 18


def test_concurrent_duplicate_submissions_store_one_row(store: Store) -> None:
    store.add_tasks(pairwise(1, 1))
    u = store.create_user("u", "labeler").user
    a = store.next_assignment(u.id)
    results = []

    def send() -> None:
        results.append(store.submit(u.id, Answer(a.assignment_id, "dup", choice="A", strength="better"))[1])

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 5 + [True]
    assert len(store.judgments()) == 1


def test_meta_is_append_only_and_splits_are_stable(store: Store) -> None:
    assert store.get_meta("simulation") is None
    store.set_meta("simulation", {"bayes_accuracy": 0.7})
    store.set_meta("simulation", {"bayes_accuracy": 0.8})
    assert store.get_meta("simulation") == {"bayes_accuracy": 0.8}
    store.add_tasks(pairwise(50, 1))
    counts = store.assign_splits(0.3, seed=7, assigned_by="test")
    assert counts["train"] + counts["heldout"] == 50 and 5 <= counts["heldout"] <= 25
    splits = {t.id: t.split for t in store.tasks()}
    assert store.assign_splits(0.9, seed=1, assigned_by="again") == {"train": 0, "heldout": 0}  # set once
    assert {t.id: t.split for t in store.tasks()} == splits
    with pytest.raises(StoreError):
        store.assign_splits(1.5, seed=0, assigned_by="x")


# -- revocation (issue item 3) -------------------------------------------------------------------------------------


def test_a_new_invite_voids_the_previous_one(store: Store) -> None:
    new = store.create_user("ann", "labeler")
    second = store.new_invite("ann")
    assert store.invite_user(new.invite_token) is None and store.redeem_invite(new.invite_token) is None
    third = store.new_invite("ann")
    assert store.redeem_invite(second) is None
    assert store.redeem_invite(third) == new.user


def test_sessions_are_server_side_and_revocable(store: Store) -> None:
    ann, bob = store.create_user("ann", "labeler"), store.create_user("bob", "labeler")
    s1, s2 = (store.create_session(ann.user.id, timedelta(days=14)) for _ in range(2))
    s3 = store.create_session(bob.user.id, timedelta(days=14))
    assert store.session_user(s1) == ann.user and store.session_user("forged") is None
    store.end_session(s1)  # logout ends this session only
    assert store.session_user(s1) is None and store.session_user(s2) == ann.user
    assert store.revoke("ann", tokens=False, sessions=True)["sessions"] == 1
    assert store.session_user(s2) is None and store.session_user(s3) == bob.user
    assert store.user_by_api_token(ann.api_token) == ann.user  # --sessions leaves the API token alone
    expired = store.create_session(bob.user.id, timedelta(seconds=-1))
    assert store.session_user(expired) is None


def test_revoked_api_token_and_deactivated_user(store: Store) -> None:
    ann = store.create_user("ann", "labeler")
    out = store.revoke("ann", tokens=True, sessions=False, new_token=True)
    assert out["api_token"] and out["invites"] == 1 and store.user_by_api_token(ann.api_token) is None
    assert store.user_by_api_token(out["new_api_token"]) == ann.user
    live = store.create_session(ann.user.id, timedelta(days=1))
    invite = store.new_invite("ann")
    store.revoke("ann", deactivate=True)
    assert store.user_by_api_token(out["new_api_token"]) is None and store.session_user(live) is None
    assert store.redeem_invite(invite) is None and store.get_user(ann.user.id) is None
    with pytest.raises(Conflict, match="deactivated"):
        store.new_invite("ann")
    store.activate("ann")
    assert store.redeem_invite(store.new_invite("ann")) == ann.user
    with pytest.raises(NotFound):
        store.revoke("nobody")


# -- files (item 6) -------------------------------------------------------------------------------------------------


def test_sqlite_files_are_created_private(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask, which made labels.db 0644
    try:
        store = Store(tmp_path / "runs" / "labels.db")
        store.add_tasks(pairwise(1, 1))
        with store.engine.connect() as c:  # hold a connection so the -wal and -shm files exist
            c.exec_driver_sql("select count(*) from tasks").all()
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "runs").iterdir()}
        store.close()
    finally:
        os.umask(old)
    assert set(modes) == {"labels.db", "labels.db-wal", "labels.db-shm"}
    assert modes == dict.fromkeys(modes, 0o600)


# -- overlap is a hard cap (item 9) ---------------------------------------------------------------------------------


def test_skip_then_supersede_cannot_exceed_the_overlap(store: Store) -> None:
    store.add_tasks(pairwise(1, 2))
    u1, u2, u3 = (store.create_user(n, "labeler").user for n in ("u1", "u2", "u3"))
    a1 = store.next_assignment(u1.id)
    skip, _ = store.submit(u1.id, Answer(a1.assignment_id, "s", skip_reason="later"))
    for u in (u2, u3):  # the skip freed u1's slot: two others take both slots
        a = store.next_assignment(u.id)
        store.submit(u.id, Answer(a.assignment_id, f"a{u.id}", choice="A", strength="better"))
    with pytest.raises(Conflict, match="already has its 2 labelers") as e:
        store.submit(u1.id, Answer(a1.assignment_id, "late", choice="B", strength="better", supersedes=skip.id))
    assert e.value.field == "assignment_id"
    labelers = {j.user_id for j in store.judgments(current_only=True) if j.kind == "pairwise"}
    assert labelers == {u2.id, u3.id}


def test_skip_then_supersede_while_the_slot_is_free_holds_it_again(store: Store) -> None:
    store.add_tasks(pairwise(1, 2))
    u1, u2, u3 = (store.create_user(n, "labeler").user for n in ("u1", "u2", "u3"))
    a1 = store.next_assignment(u1.id)
    skip, _ = store.submit(u1.id, Answer(a1.assignment_id, "s", skip_reason="later"))
    store.submit(u1.id, Answer(a1.assignment_id, "fix", choice="B", strength="better", supersedes=skip.id))
    a2 = store.next_assignment(u2.id)
    store.submit(u2.id, Answer(a2.assignment_id, "a2", choice="A", strength="better"))
    assert store.next_assignment(u3.id) is None  # u1's corrected answer holds its slot again


def test_answering_an_expired_showing_cannot_exceed_the_overlap(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store.add_tasks(pairwise(1, 1))
    u1, u2 = (store.create_user(n, "labeler").user for n in ("u1", "u2"))
    a1 = store.next_assignment(u1.id)
    monkeypatch.setattr(store_mod, "ASSIGNMENT_TTL", timedelta(0))  # u1's showing is now older than the TTL
    a2 = store.next_assignment(u2.id)
    store.submit(u2.id, Answer(a2.assignment_id, "a2", choice="A", strength="better"))
    with pytest.raises(Conflict, match="open longer than"):
        store.submit(u1.id, Answer(a1.assignment_id, "a1", choice="A", strength="better"))
    store.submit(u1.id, Answer(a1.assignment_id, "s1", skip_reason="too late anyway"))  # a skip is always fine
    assert [j.user_id for j in store.judgments() if j.kind == "pairwise"] == [u2.id]


def test_an_expired_showing_may_answer_while_its_slot_is_free(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store.add_tasks(pairwise(1, 1))
    u1 = store.create_user("u1", "labeler").user
    a1 = store.next_assignment(u1.id)
    monkeypatch.setattr(store_mod, "ASSIGNMENT_TTL", timedelta(0))
    rec, created = store.submit(u1.id, Answer(a1.assignment_id, "a1", choice="A", strength="better"))
    assert created and rec.kind == "pairwise"


# -- answers (items 8, 10) ------------------------------------------------------------------------------------------


def test_a_superseded_flag_no_longer_hides_the_task(store: Store) -> None:
    store.add_tasks(pairwise(1, 2))
    u1, u2 = (store.create_user(n, "labeler").user for n in ("u1", "u2"))
    a1 = store.next_assignment(u1.id)
    flag, _ = store.submit(u1.id, Answer(a1.assignment_id, "f", flag="broken"))
    assert store.next_assignment(u2.id) is None
    store.submit(u1.id, Answer(a1.assignment_id, "fix", choice="A", strength="better", supersedes=flag.id))
    assert store.next_assignment(u2.id).task_id == a1.task_id


def test_contradictory_and_blank_answers_are_refused(store: Store) -> None:
    store.add_tasks([TaskSpec("pairwise", "p", ["a", "b"], {}, 1), TaskSpec("ranking", "r", ["x", "y"], {}, 1)])
    u = store.create_user("u", "labeler").user
    a = store.next_assignment(u.id)
    cases = [
        (Answer(a.assignment_id, "c", choice="tie", strength="better"), "strength", "only with A or B"),
        (Answer(a.assignment_id, "c", choice="both_bad", strength="much_better"), "strength", "only with A or B"),
        (Answer(a.assignment_id, "c", skip_reason="   \t"), "skip_reason", "not blank"),
        (Answer(a.assignment_id, "c\x00", choice="tie"), "client_id", "NUL"),
        (Answer(a.assignment_id, "c", skip_reason="bad\x00reason"), "skip_reason", "NUL"),
        (Answer(a.assignment_id, "c", flag="broken", note="n\x00"), "note", "NUL"),
        (Answer(2**63, "c", choice="tie"), "assignment_id", "an id"),
        (Answer(2**31, "c", choice="tie"), "assignment_id", "an id"),
        (Answer(a.assignment_id, "c", choice="tie", supersedes=2**40), "supersedes", "an id"),
        (Answer(a.assignment_id, "c", choice="tie", time_spent_ms=True), "time_spent_ms", "integer"),
    ]
    for ans, field, message in cases:
        with pytest.raises(StoreError, match=message) as e:
            store.submit(u.id, ans)
        assert e.value.field == field and e.value.status == 422, (ans, e.value)
    with pytest.raises(NotFound):
        store.get_shown(u.id, 2**63)
    with pytest.raises(StoreError, match="NUL"):
        store.add_tasks([TaskSpec("pairwise", "p\x00", ["a", "b"], {}, 1)])
    rec, _ = store.submit(u.id, Answer(a.assignment_id, "ok", choice="A", strength="better", note="A is kinder"))
    assert rec.raw == {"choice": "A", "strength": "better", "note": "A is kinder"}  # the note is kept
    r = store.next_assignment(u.id)
    for ranks in ([2, 2], [True, True], [1, 3]):
        with pytest.raises(StoreError, match="ranks"):
            store.submit(u.id, Answer(r.assignment_id, "c", ranks=ranks))
    assert store.submit(u.id, Answer(r.assignment_id, "tied", ranks=[1, 1]))[1]
    with pytest.raises(StoreError, match="next rank skips"):
        store.add_tasks([TaskSpec("ranking", "g", ["x", "y", "z"], gold_ranks=[1, 1, 2])])


def test_reused_client_id_with_another_answer_is_a_conflict(store: Store) -> None:
    store.add_tasks(pairwise(1, 1))
    u = store.create_user("u", "labeler").user
    a = store.next_assignment(u.id)
    first, _ = store.submit(u.id, Answer(a.assignment_id, "same", choice="A", strength="better"))
    again, created = store.submit(u.id, Answer(a.assignment_id, "same", choice="A", strength="better", time_spent_ms=9))
    assert again == first and not created  # a retry (time may differ)
    with pytest.raises(Conflict, match="different answer") as e:
        store.submit(u.id, Answer(a.assignment_id, "same", choice="B", strength="better"))
    assert e.value.field == "client_id"
    with pytest.raises(StoreError, match="strength"):  # validated before it is compared
        store.submit(u.id, Answer(a.assignment_id, "same", choice="A", strength="hugely"))
    assert len(store.judgments()) == 1


def test_ended_flags_are_stored_per_response(store: Store) -> None:
    store.add_tasks([TaskSpec("pairwise", "p", ["cut", "done"], {}, 1, ended=[False, True])])
    assert [t.ended for t in store.tasks()] == [[False, True]]
    with pytest.raises(StoreError, match="ended") as e:
        store.add_tasks([TaskSpec("pairwise", "q", ["a", "b"], {}, 1, ended=[True])])
    assert e.value.field == "ended"
