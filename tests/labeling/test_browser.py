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


# -- issue #21 item 2: chat turns, Markdown, side-by-side layout, drag-and-drop ranking, guidelines -----------------

LONG_CODE = "```python\n" + "x = [" + ", ".join(str(i) for i in range(200)) + "]  # one very long line\n```"
CHAT = ("<|im_start|>system\nYou answer in *Markdown*.<|im_end|>\n<|im_start|>user\nShow me a list.<|im_end|>\n"
        "<|im_start|>assistant\nWhich kind?<|im_end|>\n<|im_start|>user\nA **Python** one.<|im_end|>\n"
        "<|im_start|>assistant\n")
XSS_CASES = [EVIL, '<img src=x onerror="window.hacked = 1">', "[click me](javascript:window.hacked=1)",
             '<a href="javascript:window.hacked=1">link</a>', "<svg onload=window.hacked=1>"]  # fmt: skip


def long_response(n: int) -> str:
    body = "\n\n".join(f"Paragraph {p} of response {n}: " + "words " * 40 for p in range(12))
    return f"Response number {n}.\n\n{LONG_CODE}\n\n{body}"


def sign_in(page, server, user) -> None:
    page.goto(f"{server.url}/invite/{user.invite_token}")
    page.click("#sign-in")


def rank_order(page) -> list[int]:
    return [int(x) for x in page.eval_on_selector_all("#ranking .rank-card", "cs => cs.map(c => c.dataset.pos)")]


def test_chat_turns_layout_and_drag_and_drop_ranking(browser, thread_server, tmp_path: Path, artifacts_dir: Path) -> None:
    from playwright.sync_api import expect

    from rlhf.labeling.app import create_app

    store = Store(tmp_path / "labels.db")
    store.add_tasks([
        TaskSpec("ranking", CHAT, [long_response(n) for n in range(4)], {}, 1),
        TaskSpec("pairwise", "Compare", [long_response(10), long_response(11)], {}, 1),
    ])  # fmt: skip
    store.set_guidelines("# Our rules\n\nPrefer **correct** code.")
    labeler = store.create_user("ann", "labeler")
    app = create_app(store, os.urandom(32).hex().encode(), gold_rate=0.0)

    with thread_server(app) as server:
        ctx = browser.new_context(viewport={"width": 1366, "height": 768})
        page = ctx.new_page()
        sign_in(page, server, labeler)
        expect(page.locator("#judge")).to_have_attribute("data-kind", "ranking")

        # 1. the prompt as turns (role + Markdown content), the generation prompt dropped
        turns = page.locator("#prompt .turn")
        expect(turns).to_have_count(4)
        expect(page.locator("#prompt .turn .role")).to_have_text(["system", "user", "assistant", "user"])
        expect(turns.nth(0).locator("em")).to_have_text("Markdown")
        expect(turns.nth(3).locator("strong")).to_have_text("Python")

        # 2./3. Markdown code blocks scroll sideways inside their card; cards scroll on their own; the page does not
        card = page.locator("#response-0")
        pre = card.locator(".text pre").first
        expect(pre.locator("code")).to_have_class("language-python")
        pre_box, card_box = pre.bounding_box(), card.bounding_box()
        assert pre_box["x"] + pre_box["width"] <= card_box["x"] + card_box["width"] + 1
        assert pre.evaluate("e => e.scrollWidth > e.clientWidth + 100")  # the long line scrolls inside the block
        text = card.locator(".text")
        assert text.evaluate("e => e.scrollHeight > e.clientHeight && getComputedStyle(e).overflowY === 'auto'")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        boxes = [page.locator(f"#response-{p}").bounding_box() for p in range(4)]
        assert boxes[0]["y"] == boxes[1]["y"] and boxes[0]["x"] < boxes[1]["x"]  # side by side
        page.screenshot(path=str(artifacts_dir / "ranking_1366x768.png"))

        # 4. drag and drop by the handle: the dragged card takes the target's place, the order sets the ranks
        expect(page.locator("#response-0 .handle")).to_be_visible()
        assert rank_order(page) == [0, 1, 2, 3]
        page.locator("#response-3 .handle").drag_to(page.locator("#response-0"))
        assert rank_order(page) == [3, 0, 1, 2]
        page.locator("#response-0 .handle").drag_to(page.locator("#response-2"))  # downwards
        assert rank_order(page) == [3, 1, 2, 0]
        expect(page.locator("#ranking .place")).to_have_text(["#1", "#2", "#3", "#4"])
        # the keyboard: click a card to highlight it, shift+up moves it one place up
        page.locator("#response-2 h2").click()
        page.keyboard.press("Shift+ArrowUp")
        assert rank_order(page) == [3, 2, 1, 0]
        expect(page.locator("#response-2")).to_have_class(re.compile("focused"))
        page.locator("#response-1 button.move[data-step='1']").click()  # the arrow buttons do the same
        assert rank_order(page) == [3, 2, 0, 1]
        page.reload()  # the order comes back with the draft
        expect(page.locator("#draft-status")).to_have_text("Draft restored")
        assert rank_order(page) == [3, 2, 0, 1]
        ranks_shown = {p: page.locator(f"select[name=rank_{p}]").input_value() for p in range(4)}
        assert ranks_shown == {3: "1", 2: "2", 0: "3", 1: "4"}
        page.screenshot(path=str(artifacts_dir / "ranking_after_drag.png"))

        # 5. the guidelines, linked from the task
        with ctx.expect_page() as popup:
            page.click("#guidelines-link")
        expect(popup.value.locator("#guidelines h1")).to_have_text("Our rules")
        expect(popup.value.locator("#guidelines strong")).to_have_text("correct")
        popup.value.close()

        page.keyboard.press("Enter")
        expect(page.locator("#judge")).to_have_attribute("data-kind", "pairwise")
        (ranking,) = [j for j in store.judgments() if j.kind == "ranking"]
        assert ranking.raw == {"ranks": [3, 4, 2, 1]}  # rank per shown position = place in the final order
        # in task terms: the response shown at position p is task response shown_order[p]
        assert [ranking.answer["ranks"][ranking.shown_order[p]] for p in range(4)] == [3, 4, 2, 1]

        # pairwise at 1366x768: two columns side by side, each with its own scroll, the code block inside
        a, b = page.locator("#response-0"), page.locator("#response-1")
        box_a, box_b = a.bounding_box(), b.bounding_box()
        assert box_a["y"] == box_b["y"] and box_a["x"] + box_a["width"] <= box_b["x"]
        assert box_a["width"] > 500 and box_b["x"] + box_b["width"] <= 1366
        for col in (a, b):
            assert col.locator(".text").evaluate("e => e.scrollHeight > e.clientHeight && e.clientHeight > 200")
            assert col.locator("pre").first.evaluate("e => e.scrollWidth > e.clientWidth")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        page.screenshot(path=str(artifacts_dir / "pairwise_1366x768.png"))
        ctx.close()


def test_ranking_form_works_without_javascript(browser, thread_server, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    from rlhf.labeling.app import create_app

    store = Store(tmp_path / "labels.db")
    store.add_tasks([TaskSpec("ranking", "Rank", ["one", "two", "three"], {}, 1)])
    labeler = store.create_user("ann", "labeler")
    app = create_app(store, os.urandom(32).hex().encode(), gold_rate=0.0)
    with thread_server(app) as server:
        ctx = browser.new_context(java_script_enabled=False)
        page = ctx.new_page()
        sign_in(page, server, labeler)
        expect(page.locator("#response-0 .handle")).to_be_hidden()  # drag needs the script
        for p, r in ((0, "2"), (1, "3"), (2, "1")):
            page.select_option(f"select[name=rank_{p}]", r)
        page.click("#submit")
        expect(page.locator("#done")).to_be_visible()
        ctx.close()
    assert [j.raw for j in store.judgments()] == [{"ranks": [2, 3, 1]}]


def test_no_raw_html_runs_in_turns_responses_or_guidelines(browser, thread_server, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    from rlhf.labeling.app import create_app

    evil = "\n\n".join(XSS_CASES)
    store = Store(tmp_path / "labels.db")
    messages = [{"role": "system", "content": evil}, {"role": "user", "content": evil}]
    store.add_tasks([
        TaskSpec("pairwise", "imported", [evil, f"B {evil}"], {"prompt_messages": messages}, 1),
        TaskSpec("ranking", f"<|im_start|>user\n{evil}<|im_end|>\n<|im_start|>assistant\n", [evil, "x", "y"], {}, 1),
    ])  # fmt: skip
    store.set_guidelines(f"# Rules\n\n{evil}")
    labeler = store.create_user("ann", "labeler")
    app = create_app(store, os.urandom(32).hex().encode(), gold_rate=0.0)
    with thread_server(app) as server:
        ctx = browser.new_context()
        page = ctx.new_page()
        dialogs: list[str] = []
        console: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("console", lambda m: console.append(m.text))
        sign_in(page, server, labeler)
        seen = []
        for expected in ("pairwise", "ranking"):
            expect(page.locator("#judge")).to_have_attribute("data-kind", expected)
            expect(page.locator("#prompt .turn")).to_have_count(2 if expected == "pairwise" else 1)
            seen.append(page.content())
            page.locator("#skip-button").click()
        page.goto(f"{server.url}/guidelines")
        expect(page.locator("#guidelines h1")).to_have_text("Rules")
        seen.append(page.content())
        for html in seen:
            assert "window.hacked" in html  # shown as text
        for url in ("/label", "/guidelines"):
            page.goto(server.url + url)
            assert page.evaluate("window.hacked") is None
            assert page.locator("main img, main svg, main iframe, main a[href^='javascript'], main [onerror]").count() == 0
        # Nothing was even tried: a raw <script> that the CSP blocked would show up as a console error.
        assert dialogs == [] and not [m for m in console if "Content Security Policy" in m], console
        ctx.close()
