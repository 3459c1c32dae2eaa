"""The availability board in a real browser: serve on the session's etcd with an expectation file, a forecast
partly posted, two waiters registered; headless Chromium renders /board and follows it live.

The browser tests are skipped only when chromium is missing (scripts/setup.sh installs it).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest
from board_helpers import Board, state_of
from chromium import Page
from waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
#: The README's picture of the board, rewritten only when AVISO_WORKFLOWS_UPDATE_DOCS=1 asks for it.
SCREENSHOT = ROOT / "docs" / "board.png"
#: How soon a post must show on an open page.
LIVE_SECONDS = 2.0


def cells_by_id(board: Board) -> dict[str, dict[str, object]]:
    return {cell["id"]: cell for cell in state_of(board)["cells"]}


def test_state_has_arrived_late_waited_and_expected_cells(board: Board) -> None:
    cells = eventually(lambda: (c := cells_by_id(board))[board.cell(board.today, 0)]["state"] == "late" and c,
                       what="step 0 turning late", timeout=15)
    today, yesterday = board.today, board.yesterday
    assert cells[board.cell(today, 6)]["state"] == "arrived"
    assert cells[board.cell(today, 6)]["location"] == f"file:///data/od/oper/{today}/00/006.grib"
    assert cells[board.cell(today, 6)]["arrived_at"]
    step12 = cells[board.cell(today, 12)]
    assert step12["state"] == "waited"
    assert [w["label"] for w in step12["waiters"]] == ["/forecast/00/wait_step12"]  # type: ignore[index]
    assert step12["waiters"][0]["where"].endswith(f":{board.waiter.pid}")  # type: ignore[index]
    assert [w["label"] for w in cells[board.cell(today, 24)]["waiters"]] == [  # type: ignore[index]
        "forecast_products/wait_step_24"]
    assert cells[board.cell(today, 18)]["state"] == "expected"
    assert cells[board.cell(today, 18)]["expected_by"]
    assert all(cells[board.cell(yesterday, step)]["state"] == "arrived" for step in range(0, 43, 6))
    assert cells[board.cell(yesterday, 48)]["state"] == "none"
    lateness = state_of(board)["lateness"]
    assert [(item["request"]["step"], item["state"]) for item in lateness] == [("0", "late")]
    # the checker inside serve fired the expectation's trigger
    eventually(lambda: board.late_log.exists() and "step=0" in board.late_log.read_text(), what="the late trigger",
               timeout=10)


def test_a_bad_query_is_refused_naming_the_field(board: Board) -> None:
    page = httpx.get(f"{board.url}/board?class=zz&step=0", timeout=10)
    assert page.status_code == 400
    assert "class" in page.text and "zz" in page.text and "od" in page.text
    answer = httpx.get(f"{board.url}/board/state?days=99", timeout=10)
    assert answer.status_code == 400
    assert answer.json()["message"].startswith("days: '99'")
    events = httpx.get(f"{board.url}/board/events?event=nothing", timeout=10)
    assert events.status_code == 400 and "event" in events.json()["message"]


def test_the_page_renders_the_grid_accessibly_and_is_saved_as_a_screenshot(board: Board, page: Page,
                                                                           tmp_path: Path) -> None:
    eventually(lambda: cells_by_id(board)[board.cell(board.today, 0)]["state"] == "late", what="step 0 turning late",
               timeout=15)
    page.open(f"{board.url}/board?{board.query}")
    states = page.evaluate("Object.fromEntries([...document.querySelectorAll('#board td')]"
                           ".map(td => [td.id, td.dataset.state]))")
    today = board.today
    assert states[board.cell(today, 0)] == "late"
    assert states[board.cell(today, 6)] == "arrived"
    assert states[board.cell(today, 12)] == "waited"
    assert states[board.cell(today, 30)] == "expected"
    assert states[board.cell(board.yesterday, 0)] == "arrived"
    # table semantics: column and row headers, a caption; every cell focusable, labelled, with text (not only colour)
    shape = page.evaluate("""({cols: document.querySelectorAll('#board thead th[scope=col]').length,
        rows: document.querySelectorAll('#board tbody th[scope=row]').length,
        caption: document.querySelector('#board caption').textContent,
        unfocusable: [...document.querySelectorAll('#board td')].filter(td => td.tabIndex !== 0).length,
        unlabelled: [...document.querySelectorAll('#board td')].filter(td => !td.getAttribute('aria-label')).length,
        words: [...document.querySelectorAll('#board td .word')].map(w => w.textContent)})""")
    assert shape["cols"] == 1 + 9 and shape["rows"] == 2
    assert "newest first" in shape["caption"]
    assert "expver=" + board.expver in page.evaluate("document.querySelector('header .query').textContent")
    assert shape["unfocusable"] == 0 and shape["unlabelled"] == 0
    assert {"late", "arrived", "waited for", "expected", "nothing yet"} <= set(shape["words"])
    title = page.evaluate(f"document.getElementById('{board.cell(today, 12)}').title")
    assert "/forecast/00/wait_step12" in title and f":{board.waiter.pid}" in title
    late = page.evaluate(f"document.getElementById('{board.cell(today, 0)}').textContent")
    assert "late" in late and "min" in late
    side = page.evaluate("[document.getElementById('waiters').innerText, document.getElementById('lateness')"
                         ".innerText]")
    assert "/forecast/00/wait_step12" in side[0] and "forecast_products/wait_step_24" in side[0]
    assert "late by" in side[1]
    screenshot = SCREENSHOT if os.environ.get("AVISO_WORKFLOWS_UPDATE_DOCS") == "1" else tmp_path / "board.png"
    page.screenshot(screenshot)
    assert screenshot.stat().st_size > 10_000


def test_the_keyboard_reaches_every_detail(board: Board, page: Page) -> None:
    page.open(f"{board.url}/board?{board.query}")
    page.evaluate(f"document.getElementById('{board.cell(board.today, 0)}').focus()")
    page.press("ArrowRight", key_code=39)
    assert page.evaluate("document.activeElement.id") == board.cell(board.today, 6)
    details = page.evaluate("document.getElementById('details').innerText")
    assert "Location" in details and f"{board.today}/00/006.grib" in details
    page.press("ArrowRight", key_code=39)
    details = page.evaluate("document.getElementById('details').innerText")
    assert "Waited for by" in details and "/forecast/00/wait_step12" in details
    page.press("ArrowUp", key_code=38)  # rows are newest first: yesterday is below today
    assert page.evaluate("document.activeElement.id") == board.cell(board.today, 12)
    page.press("ArrowDown", key_code=40)
    assert page.evaluate("document.activeElement.id") == board.cell(board.yesterday, 12)


def test_the_page_fits_a_phone(board: Board, page: Page) -> None:
    page.viewport(390, 844, mobile=True)
    try:
        page.open(f"{board.url}/board?{board.query}")
        layout = page.evaluate("""({page: document.documentElement.scrollWidth,
            grid: document.querySelector('.scroller').getBoundingClientRect().bottom,
            aside: document.querySelector('aside').getBoundingClientRect().top})""")
        assert layout["page"] <= 390, "the page scrolls sideways; only the grid should"
        assert layout["aside"] >= layout["grid"], "the side lists should stack below the grid"
    finally:
        page.viewport(1280, 720)


#: Elements outside the grid's scroller whose box or text reaches past the viewport.
OVERFLOWING = """[...document.querySelectorAll('body *')]
    .filter(e => !e.closest('.scroller') && (e.getBoundingClientRect().right > window.innerWidth + 0.5
        || e.scrollWidth > e.clientWidth + 0.5 && getComputedStyle(e).overflowX === 'visible'))
    .map(e => e.tagName.toLowerCase() + (e.className ? '.' + e.className : '') + ' ' +
         Math.round(e.getBoundingClientRect().right))"""


def fits_390(page: Page, what: str) -> None:
    assert page.evaluate(OVERFLOWING) == [], f"wider than the screen: {what}"
    page.evaluate("window.scrollTo(100, window.scrollY)")
    assert page.evaluate("[document.documentElement.scrollWidth, window.scrollX]") == [390, 0], \
        f"the page scrolls sideways: {what}"


def test_nothing_but_the_grid_scrolls_sideways_at_390_px(board: Board, page: Page) -> None:
    """At a phone's 390 px: no element outside the grid's scroller reaches past the viewport, whichever cell's
    details show (a location, waiters), nor with a refused query quoting a long value."""
    page.viewport(390, 844, mobile=True)
    try:
        page.open(f"{board.url}/board?{board.query}")
        for step in (6, 12, 24, 0):
            page.evaluate(f"document.getElementById('{board.cell(board.today, step)}').focus()")
            fits_390(page, f"step {step}'s details")
        page.open(f"{board.url}/board?{board.query}&expver={'x' * 80}", ready="document.readyState === 'complete'")
        assert "Invalid board request" in page.evaluate("document.body.innerText")
        fits_390(page, "a refused query")
    finally:
        page.viewport(1280, 720)


def test_a_post_turns_its_cell_without_a_reload(board: Board, page: Page) -> None:
    page.open(f"{board.url}/board?{board.query}")
    page.evaluate("window.notReloaded = true")
    today = board.today
    step12 = board.cell(today, 12)
    assert page.evaluate(f"document.getElementById('{step12}').dataset.state") == "waited"
    body = {"event_type": "mars", "identifier": board.fields(today, 12),
            "payload": f"file:///data/od/oper/{today}/00/012.grib"}
    posted = time.monotonic()
    answer = httpx.post(f"{board.url}/api/v1/notification", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    page.until(f"document.getElementById('{step12}').dataset.state === 'arrived'", LIVE_SECONDS)
    assert time.monotonic() - posted < LIVE_SECONDS + 0.5
    assert page.evaluate("window.notReloaded") is True
    assert f"{today}/00/012.grib" in page.evaluate(f"document.getElementById('{step12}').title")
    # the CLI waiter is released and leaves the side list, live too
    assert board.waiter.wait(timeout=15) == 0
    page.until("!document.getElementById('waiters').innerText.includes('wait_step12')", 10)
    # a late step arriving turns late -> arrived late, and the lateness list says by how much
    step0 = board.cell(today, 0)
    posted = time.monotonic()
    body = {"event_type": "mars", "identifier": board.fields(today, 0), "payload": None}
    assert httpx.post(f"{board.url}/api/v1/notification", json=body, timeout=10).status_code == 200
    page.until(f"document.getElementById('{step0}').dataset.state === 'arrived-late'", LIVE_SECONDS)
    assert time.monotonic() - posted < LIVE_SECONDS + 0.5
    page.until("document.getElementById('lateness').innerText.includes('arrived late by')", 5)
    assert page.evaluate("window.notReloaded") is True


@pytest.mark.parametrize("query", ["class=od&step=0,6,12&date=20010101",
                                   "class=od&step=0&step=6&step=12&date=20010101"])
def test_steps_as_commas_or_repeated_and_cycles_when_time_is_open(board: Board, query: str) -> None:
    answer = httpx.get(f"{board.url}/board/state?{query}", timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["columns"] == ["0", "6", "12"]
    assert answer.json()["rows"] == [["20010101", "18"], ["20010101", "12"], ["20010101", "06"], ["20010101", "00"]]
