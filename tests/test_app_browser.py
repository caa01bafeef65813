"""The service's web page in a real browser: Debian's Chromium driven by Playwright,
against the app and the stand-in AniList on 127.0.0.1. What a person does: type an AniList
user name, add a filter, search a title for similar ones, build a list, mistype a name.
Each state is saved as a screenshot in the test's tmp dir."""

from pathlib import Path

import pytest
import requests

from serving.batch import revision_of
from serving.app import Service, create_app
from serving.lists import ListLookup
from tests.app_harness import serving

CHROMIUM = Path("/usr/bin/chromium")
# No network, no first-run work, no sandbox (tests run as root in a container).
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                                 "(requirements-test.txt; `make install`)")
if not CHROMIUM.exists():
    pytest.skip(f"no browser: {CHROMIUM} is missing (`make install` installs Debian's chromium "
                "with apt-get when run as root)", allow_module_level=True)


@pytest.fixture(scope="module")
def url(app_rec, anilist):
    lists = ListLookup(anilist.url, rate=0, per_client=1000, ttl=600)
    with serving(create_app(Service(app_rec, revision_of(app_rec, None), lists))) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


def _page(browser, width: int, height: int):
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(20_000)
    outside = []  # every request must stay on 127.0.0.1: no CDN, no fonts from elsewhere
    page.on("request", lambda r: None if r.url.startswith("http://127.0.0.1") else outside.append(r.url))
    missing = []  # and find what it asks for (the favicon too), bar the pages tested for errors
    page.on("response", lambda r: missing.append(r.url) if r.status == 404 and "/static/" in r.url
            or r.url.endswith("/favicon.ico") and r.status != 200 else None)
    yield page
    context.close()
    assert not outside, f"the page asked for {outside}"
    assert not missing, f"not found: {missing}"


@pytest.fixture
def page(browser):
    yield from _page(browser, 1280, 900)


@pytest.fixture
def phone(browser):
    yield from _page(browser, 390, 844)


def result_rows(page) -> list[dict]:
    """The results table as text, one dict a row."""
    page.wait_for_selector("#results")
    cells = page.locator("#results tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.innerText.trim()))")
    return [dict(zip(("rank", "title", "year", "format", "genres", "predicted", "why"), c))
            for c in cells]


def test_an_anilist_user_gets_ten_and_a_filter_changes_them(page, url, app_rec, tmp_path):
    user = f"user{int(app_rec.users['user_id'].iloc[2])}"
    page.goto(url + "/")
    page.fill("#user", user)
    page.click("#go-user")
    rows = result_rows(page)
    page.screenshot(path=tmp_path / "user.png", full_page=True)
    assert len(rows) == 10 and [r["rank"] for r in rows] == [str(i) for i in range(1, 11)]
    api = requests.post(url + "/recommend", json={"user": user}, timeout=30).json()["results"]
    assert [r["title"] for r in rows] == [r["title"] for r in api]
    assert all(r["why"].startswith(("Because you", "Next after")) for r in rows)
    assert all(1 <= float(r["predicted"]) <= 100 for r in rows)
    assert page.locator("h2", has_text=f"For {user}").count() == 1

    page.click("summary")                          # open the filters
    page.check("input[name=format][value=MOVIE]")
    page.fill("#min_year", "2005")
    page.click("#go-user")
    page.wait_for_url("**format=MOVIE**")
    filtered = result_rows(page)
    page.screenshot(path=tmp_path / "user_movies.png", full_page=True)
    assert filtered and {r["format"] for r in filtered} == {"Movie"}   # as the filter spells it
    assert page.locator("label.check", has_text="Movie").count() == 1
    assert all(r["year"] == "–" or int(r["year"]) >= 2005 for r in filtered)
    assert [r["title"] for r in filtered] != [r["title"] for r in rows]
    assert page.is_checked("input[name=format][value=MOVIE]")   # the form keeps its state


def test_search_a_title_then_see_similar_titles(page, url, app_rec, tmp_path):
    title = app_rec.anime.sort_values("popularity")["title"].iloc[-1]
    page.goto(url + "/title")
    page.locator("#find-title").press_sequentially(title[:4], delay=30)
    option = page.locator("#find-title-options li[role=option]").first
    option.wait_for()
    page.screenshot(path=tmp_path / "autocomplete.png")
    picked = option.locator("span").inner_text()
    assert title[:4].lower() in picked.lower()
    page.keyboard.press("Enter")
    page.wait_for_url("**/title?id=**")
    page.wait_for_selector("#similar")
    page.screenshot(path=tmp_path / "similar.png", full_page=True)
    assert page.locator("#similar h2").inner_text() == picked
    similar = page.locator("#similar tbody td.name").all_inner_texts()
    assert len(similar) == 10 and picked not in similar
    anime_id = int(page.url.rsplit("=", 1)[1])
    want = app_rec.similar_anime(anime_id, k=10)["title"].tolist()
    assert similar == want


def test_build_a_list_by_searching_titles(page, url, app_rec, tmp_path):
    titles = app_rec.anime.sort_values("popularity")["title"].iloc[-2:].tolist()
    page.goto(url + "/")
    for title, score in zip(titles, ("90", "")):
        page.locator("#add-title").press_sequentially(title, delay=10)
        page.locator("#add-title-options li[role=option]", has_text=title).first.click()
        if score:
            page.locator("#built-list tr", has_text=title).locator("input.score").fill(score)
    assert page.locator("#built-list tr[data-id]").count() == 2
    page.click("#go-list")
    rows = result_rows(page)
    page.screenshot(path=tmp_path / "built_list.png", full_page=True)
    assert len(rows) == 10 and not {r["title"] for r in rows} & set(titles)
    reasons = {r["why"] for r in rows}
    assert reasons <= {f"Because you rated {titles[0]} 90", f"Because you watched {titles[1]}",
                       f"Next after {titles[0]}, which you rated 90",
                       f"Next after {titles[1]}, which you watched"}
    assert page.locator("#built-list tr[data-id]").count() == 2   # the list is still there


def test_an_unknown_user_gets_a_message(page, url, tmp_path):
    page.goto(url + "/")
    page.fill("#user", "nobody-by-this-name")
    page.click("#go-user")
    alert = page.locator("#error")
    alert.wait_for()
    page.screenshot(path=tmp_path / "unknown_user.png", full_page=True)
    assert alert.inner_text() == ("No public AniList user named 'nobody-by-this-name': the name "
                                  "is unknown, or the profile or list is private.")
    assert page.locator("#results").count() == 0
    page.fill("#user", "")
    page.click("#go-user")
    assert page.locator("#error").inner_text() == "Type an AniList user name."
    page.goto(url + "/?mode=user&user=x&k=abc")
    assert page.locator("#error").inner_text() == "`k` must be a whole number from 1 to 100. Received: 'abc'."
    page.goto(url + "/?mode=user&user=x&k=1000000000")
    assert page.locator("#error").inner_text() == ("`k` must be a whole number from 1 to 100. "
                                                   "Received: '1000000000'.")
    page.goto(url + "/?mode=user&user=x&min_year=" + "9" * 5000)
    assert page.locator("#error").inner_text().startswith("`min_year` must be a whole number from 0 to 9999.")
    page.goto(url + "/?mode=list&history=abc:xx")
    assert page.locator("#error").inner_text() == "The list holds 'abc:xx', which is not a title id and a score."
    page.goto(url + "/title?q=zzzz-nothing")
    assert page.locator(".alert").inner_text() == "No title matches 'zzzz-nothing'."
    page.goto(url + "/title?id=" + "7" * 5000)
    assert page.locator(".alert").inner_text() == ("`id` must be a title id (a whole number). "
                                                   "Received: '77777777777777777777'.")
    page.goto(url + "/?mode=list&history=1:" + "9" * 5000)
    assert page.locator("#error").inner_text() == "Scores are from 0 to 100. Received: 99999999999999999999."


def test_the_page_fits_a_phone(phone, url, app_rec, tmp_path):
    """At 390 px wide nothing is wider than the screen: each result is the title, its
    year and format under it, the predicted score beside it and the reason on a line of
    its own, not a word a line."""
    user = f"user{int(app_rec.users['user_id'].iloc[2])}"
    phone.goto(url + "/")
    phone.fill("#user", user)
    phone.click("#go-user")
    phone.wait_for_selector("#results")
    phone.wait_for_load_state("load")
    phone.screenshot(path=tmp_path / "phone.png", full_page=True)
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide at 390"
    rows = phone.locator("#results tbody tr")
    assert rows.count() == 10
    for i in range(rows.count()):
        why, name = rows.nth(i).locator("td.why"), rows.nth(i).locator("td.name")
        assert why.bounding_box()["width"] >= 250, "the reason has the row's width"
        assert why.bounding_box()["y"] > name.bounding_box()["y"], "under the title"
        line = name.locator(".meta-line").inner_text()
        assert line and ("·" in line or line.strip()), line
    assert phone.locator("#results td.genres").first.is_hidden()
    assert phone.locator("#rank-vs-score").is_visible()
    png = (tmp_path / "phone.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 390
