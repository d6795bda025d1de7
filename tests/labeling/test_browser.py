"""The web app in a real browser (Playwright driving Debian's Chromium): keyboard labeling with a draft that
survives a reload, and the admin page with agreement figures and the export download."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from rlhf.labeling.store import Answer, Store, TaskSpec

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing: apt-get install -y chromium"),
]

EVIL = "<script>window.hacked = 1; alert('x')</script>"


def test_label_with_keyboard_then_admin_exports(browser, thread_server, tmp_path: Path, artifacts_dir: Path) -> None:
    from playwright.sync_api import expect

    from rlhf.labeling.app import create_app

    store = Store(tmp_path / "labels.db")
    store.add_tasks(
        [
            TaskSpec("pairwise", f"Review the film. {EVIL}", ["A lovely, moving film.", f"Awful. {EVIL}"], {}, 3),
            TaskSpec("ranking", "Rank the replies", ["great reply", "good reply", "bad reply"], {}, 3),
        ]
    )
    # Two other labelers (who disagree) answered both tasks already, so the admin page has agreement to show.
    for name, better, ranks in (("peer", 0, [1, 2, 3]), ("peer2", 1, [3, 2, 1])):
        peer = store.create_user(name, "labeler").user
        for n in range(2):
            s = store.next_assignment(peer.id, gold_rate=0)
            if s.kind == "pairwise":
                choice = "A" if s.shown_order[0] == better else "B"
                store.submit(peer.id, Answer(s.assignment_id, f"p{n}", choice=choice, strength="better"))
            else:
                store.submit(peer.id, Answer(s.assignment_id, f"p{n}", ranks=[ranks[i] for i in s.shown_order]))
    labeler = store.create_user("ann", "labeler")
    admin = store.create_user("root", "admin")
    app = create_app(store, os.urandom(32).hex().encode(), gold_rate=0.0)

    with thread_server(app) as server:
        ctx = browser.new_context()
        page = ctx.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

        page.goto(f"{server.url}/invite/{labeler.invite_token}")
        page.click("#sign-in")
        expect(page).to_have_url(re.compile(r"/label$"))
        expect(page.locator("#judge")).to_have_attribute("data-kind", "pairwise")
        expect(page.locator("#prompt")).to_contain_text("<script>window.hacked")  # shown as text, not run

        page.keyboard.press("2")  # B is better
        page.keyboard.press(" ")  # strength: better -> much better
        page.reload()  # mid-task reload: the draft comes back
        expect(page.locator("#draft-status")).to_have_text("Draft restored")
        expect(page.locator('input[name="choice"][value="B"]')).to_be_checked()
        expect(page.locator('input[name="strength"][value="much_better"]')).to_be_checked()
        page.screenshot(path=str(artifacts_dir / "label_page.png"), full_page=True)
        page.keyboard.press("Enter")

        expect(page.locator("#judge")).to_have_attribute("data-kind", "ranking")
        expect(page.locator("#saved")).to_be_visible()
        page.keyboard.press("2")  # first shown response: rank 2
        page.keyboard.press("1")  # second: rank 1
        page.reload()
        expect(page.locator("#draft-status")).to_have_text("Draft restored")
        assert [page.locator("select.rank").nth(i).input_value() for i in range(3)] == ["2", "1", ""]
        expect(page.locator(".rank-card").nth(2)).to_have_class(re.compile("focused"))
        page.keyboard.press("3")
        page.keyboard.press("Enter")
        expect(page.locator("#done")).to_be_visible()
        assert page.evaluate("window.hacked") is None and dialogs == []
        # Drafts of submitted answers are cleared.
        assert page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('rlhf-draft'))") == []

        mine = [j for j in store.judgments() if j.user_name == "ann"]
        assert [j.raw for j in mine] == [{"choice": "B", "strength": "much_better"}, {"ranks": [2, 1, 3]}]
        pair, ranking = mine
        assert pair.answer["better"] == pair.shown_order[1]  # "B" = the second response shown
        assert [ranking.answer["ranks"][i] for i in ranking.shown_order] == [2, 1, 3]
        assert pair.time_spent_ms > 0

        admin_ctx = browser.new_context(accept_downloads=True)
        apage = admin_ctx.new_page()
        apage.goto(f"{server.url}/invite/{admin.invite_token}")
        apage.click("#sign-in")
        expect(apage).to_have_url(re.compile(r"/admin$"))
        expect(apage.locator("#alpha")).to_have_text(re.compile(r"^-?\d\.\d{3}$"))
        expect(apage.locator("#fleiss")).to_have_text(re.compile(r"^-?\d\.\d{3}$"))
        expect(apage.locator("#labelers tbody tr")).to_have_count(3)
        expect(apage.locator("#labelers .kappa").first).to_have_text(re.compile(r"^-?\d\.\d{3}$"))
        # estimated accuracy (one-coin Dawid-Skene over the overlap): every labeler here shares tasks with others
        expect(apage.locator("#labelers .reliability")).to_have_text([re.compile(r"^\d\.\d{3} ± \d\.\d{2}$")] * 3)
        expect(apage.locator("#reliability-note")).to_contain_text("comparisons with overlap or gold")
        apage.screenshot(path=str(artifacts_dir / "admin_page.png"), full_page=True)
        with apage.expect_download() as download:
            apage.click("#export-pairs")
        assert download.value.suggested_filename == "preferences.jsonl"
        rows = [json.loads(x) for x in Path(download.value.path()).read_text().splitlines()]
        assert {r["task_id"] for r in rows} <= {1, 2} and all(set(r) >= {"prompt", "chosen", "rejected"} for r in rows)
        ctx.close()
        admin_ctx.close()
    assert (artifacts_dir / "label_page.png").stat().st_size > 1000
    assert (artifacts_dir / "admin_page.png").stat().st_size > 1000
