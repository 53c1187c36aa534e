"""The page at / of `gptclf serve`, driven in a real headless Chromium (Playwright's client).

The server is the real one (uvicorn on an ephemeral loopback port) over the tiny reviews model;
what the page shows is checked against `Classifier.predict` / `predict_file`. Every request the
browser makes to anything but that server is aborted and fails the test: the page must work
offline. Screenshots of each state are saved under tests/artifacts/ui/ (ignored by git).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fixtures_tool import reviews, write_reviews
from gptclf import Classifier
from gptclf.server import RUN_IMAGES, Limits, create_app, running

ARTIFACTS = Path(__file__).parent / "artifacts" / "ui"
LIMITS = Limits(max_texts=8, max_chars=2000)  # small, so a file needs several requests
# Without the background-networking flags Chromium keeps trying to reach Google on a closed
# network and stalls; --no-proxy-server keeps a proxy in the environment off loopback;
# --disable-dev-shm-usage: containers often have a tiny /dev/shm, where Chromium crashes.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str | None:
    """$GPTCLF_CHROMIUM, else a Chromium or Chrome on PATH (`make test` installs Debian's)."""
    if os.environ.get("GPTCLF_CHROMIUM"):
        return os.environ["GPTCLF_CHROMIUM"]
    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    return next((p for p in map(shutil.which, names) if p), None)


@pytest.fixture(scope="module")
def clf(reviews_run: Path) -> Classifier:
    return Classifier.load(reviews_run)


@pytest.fixture(scope="module")
def url(clf: Classifier) -> Iterator[str]:
    with running(create_app(clf, LIMITS)) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')"
    )
    executable = chromium_path()
    if executable is None:
        pytest.skip(
            "no Chromium on PATH: `make browser` installs it (apt-get, as root), or set GPTCLF_CHROMIUM"
        )
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Page:
    """A fresh browser page on the server's / that records what would make the test dishonest:
    requests elsewhere (aborted), console errors (a CSP violation is one) and uncaught errors."""

    def __init__(self, browser, url: str, width: int = 1000):
        self.url, self.outside, self.errors, self.classify_bodies = url, [], [], []
        self.context = browser.new_context(viewport={"width": width, "height": 900})
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", self._request)

    def _route(self, route) -> None:
        if route.request.url.startswith(self.url):
            route.continue_()
        else:
            self.outside.append(route.request.url)
            route.abort()

    def _request(self, request) -> None:
        if request.url.endswith("/classify"):
            self.classify_bodies.append(json.loads(request.post_data))

    def open(self):
        self.page.goto(self.url + "/")
        self.page.wait_for_selector("#card dt")  # /info has arrived and the card is drawn
        return self.page

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)

    def close(self, errors_expected: bool = False) -> None:
        self.context.close()
        assert self.outside == [], "the page requested something outside the server"
        if not errors_expected:
            assert self.errors == []


@pytest.fixture
def tab(browser, url: str) -> Iterator[Page]:
    page = Page(browser, url)
    yield page
    page.close()


def percent(p: float) -> str:
    """As the page writes a probability: one decimal, never a rounded 100.0% or 0.0%."""
    return ">99.9%" if 0.9995 <= p < 1 else "<0.1%" if 0 < p < 0.0005 else f"{100 * p:.1f}%"


def test_percents_and_bars(tab: Page) -> None:
    page = tab.open()
    for p in (0, 0.0004, 0.0005, 0.25, 0.12345, 0.9994, 0.9995, 0.99999, 1):
        assert page.evaluate("p => percent(p)", p) == percent(p)
    # Bars as long as their probability, extreme ones too (no real model here says 0.00001).
    probabilities = {"ham": 0.00001, "maybe": 0.3, "spam": 0.69999}
    page.evaluate(
        "p => showPrediction({label: 'spam', probability: 0.69999, probabilities: p})",
        probabilities,
    )
    assert bar_lengths(page) == pytest.approx(probabilities, abs=0.01)


def bar_lengths(page) -> dict[str, float]:
    """Each bar's drawn length as a share of its track, measured in the rendered page."""
    return page.eval_on_selector_all(
        "#bars .bar",
        """rows => Object.fromEntries(rows.map(r => [r.dataset.label,
            r.querySelector('.fill').getBoundingClientRect().width /
            r.querySelector('.track').getBoundingClientRect().width]))""",
    )


def shown_prediction(page) -> dict:
    """Label, probability text and the bars (label → probability) as the DOM shows them."""
    bars = page.eval_on_selector_all(
        "#bars .bar",
        "rows => rows.map(r => [r.dataset.label, Number(r.dataset.probability),"
        " r.lastElementChild.textContent])",
    )
    return {
        "label": page.inner_text("#label"),
        "probability": page.inner_text("#probability"),
        "bars": {name: (p, text) for name, p, text in bars},
    }


def test_typed_texts_are_classified_like_the_api(tab: Page, clf: Classifier) -> None:
    page = tab.open()
    page.keyboard.press("Tab")  # the text box is the first stop: keyboard only from here
    assert page.evaluate("document.activeElement.id") == "text"
    texts = ["It was great love and perfect.", "It was awful, broke, refund!"]
    for i, (text, expected) in enumerate(zip(texts, clf.predict(texts), strict=True)):
        page.fill("#text", text)
        page.press("#text", "Enter")
        page.wait_for_function(
            "n => document.querySelectorAll('#history li').length === n", arg=i + 1
        )
        shown = shown_prediction(page)
        assert shown["label"] == expected.label
        assert shown["probability"] == percent(expected.probability)
        assert list(shown["bars"]) == clf.labels
        assert bar_lengths(page) == pytest.approx(expected.probabilities, abs=0.01)
        for name, (p, text_shown) in shown["bars"].items():
            assert p == pytest.approx(expected.probabilities[name], abs=1e-5)
            assert text_shown == percent(expected.probabilities[name])
    history = page.locator("#history li").all_inner_texts()
    assert [h.split(" ", 1)[0] for h in history] == [p.label for p in clf.predict(texts[::-1])]
    assert texts[0] in history[1]  # newest first
    assert tab.classify_bodies == [{"texts": [t]} for t in texts]
    tab.screenshot("text")
    # Keyboard only: Tab past the button to the newest history entry, Enter classifies it again.
    page.focus("#text")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.title") == texts[1]
    outline = "getComputedStyle(document.activeElement).outlineStyle"
    assert page.evaluate(outline) == "solid"  # the focus is visible
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.querySelectorAll('#history li').length === 3")
    assert tab.classify_bodies[-1] == {"texts": [texts[1]]}


def test_model_card(tab: Page, clf: Classifier) -> None:
    page = tab.open()
    terms, details = page.locator("#card dt"), page.locator("#card dd")
    card = dict(zip(terms.all_inner_texts(), details.all_inner_texts(), strict=True))
    assert card["base model"] == "gpt2-tiny (random weights)"
    assert card["labels"] == ", ".join(clf.labels)
    assert card["trainable"] == clf.info.train_config["trainable"]
    assert card["text columns"] == "headline, review_body"
    accuracy = page.locator("#metrics tr", has_text="balanced accuracy").locator("td")
    expected = [clf.metrics[s]["balanced_accuracy"] for s in ("validation", "test")]
    assert accuracy.all_inner_texts() == [f"{100 * a:.2f}%" for a in expected]
    # Both plots are drawn: the browser fetched and decoded them from the run directory.
    page.wait_for_function("() => [...document.images].every(i => i.complete)")
    widths = page.eval_on_selector_all("#images img", "imgs => imgs.map(i => i.naturalWidth)")
    assert len(widths) == 2 and all(w > 100 for w in widths)


def run_file(tab: Page, path: Path):
    page = tab.open()
    page.set_input_files("#file", str(path))
    page.wait_for_selector("#run:enabled")
    page.click("#run")
    page.wait_for_selector("#download:visible, #error:visible")  # done, or failed
    assert page.is_hidden("#error"), page.inner_text("#error")
    return page


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_a_file_is_classified_like_predict_file(
    tab: Page, clf: Classifier, tmp_path: Path, suffix: str
) -> None:
    rows = reviews(n_per_class=9, seed=1)  # 27 rows: at least 4 requests of at most 8 texts
    rows[3]["review_body"] = 'It was "great",\nsaid I, love'  # quotes, delimiter and newline
    rows[5]["review_body"] = rows[5]["headline"] = ""  # an empty text: left unlabelled
    rows[7]["review_body"] = "It was fine. " * 150  # 1950 characters: a request of its own
    rows[8]["review_body"] = "It was fine. " * 160  # over max_chars: cannot be sent, unlabelled
    source = write_reviews(tmp_path / f"new{suffix}", rows)
    expected_file = tmp_path / "expected.csv"
    clf.predict_file(source, expected_file)
    expected = list(csv.DictReader(expected_file.open(newline="", encoding="utf-8")))

    page = run_file(tab, source)
    selected = page.eval_on_selector_all("#columns option:checked", "o => o.map(x => x.text)")
    assert selected == ["review_body", "headline"]  # the training columns, in the file's order
    sent = tab.classify_bodies
    assert all(len(b["texts"]) <= LIMITS.max_texts for b in sent)
    assert all(sum(map(len, b["texts"])) <= LIMITS.max_chars for b in sent)
    assert sum(len(b["texts"]) for b in sent) == 25 and len(sent) >= 5
    assert page.inner_text("#file-status") == (
        f"new{suffix}: 25 rows classified, 1 with an empty text left unlabelled, "
        "1 over 2000 characters left unlabelled"
    )
    expected[8].update({k: "" for k in expected[8] if k.startswith("predicted_")})
    expected[8].update({f"probability_{n}": "" for n in clf.labels})
    with page.expect_download() as download:
        page.click("#download")
    got = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text("utf-8"))))
    assert list(got[0]) == list(expected[0])
    assert len(got) == len(expected) == 27
    for g, e in zip(got, expected, strict=True):
        assert {k: g[k] for k in ("id", "review_body", "predicted_label")} == {
            k: e[k] for k in ("id", "review_body", "predicted_label")
        }
        for name in ["predicted_probability"] + [f"probability_{n}" for n in clf.labels]:
            assert (g[name] == e[name] == "") or float(g[name]) == pytest.approx(
                float(e[name]), abs=1e-5
            )
    shown = page.locator("#table tbody tr").nth(3).locator("td").all_text_contents()
    assert shown[1] == rows[3]["review_body"] and shown[4] == expected[3]["predicted_label"]
    if suffix == ".csv":
        tab.screenshot("file")


PARSER_CASES = [
    ("x.csv", 'a,b\r\n1,"x,y"\r\n2,"he said ""hi"""\r\n', ","),
    ("x.csv", '\ufeffText,Label\n"two\nlines",spam\n\nlast,ham', ","),  # BOM, blank line, no EOL
    ("x.tsv", 'a\tb\n"q\tx"\t2\n3\t\n', "\t"),
    ("x.txt", "a\tb\n1\t2\n", "\t"),  # sniffed from the header line
]


@pytest.mark.parametrize(("name", "text", "delimiter"), PARSER_CASES)
def test_the_pages_table_parser_reads_as_python_csv(
    tab: Page, name: str, text: str, delimiter: str
) -> None:
    page = tab.open()
    got = page.evaluate("([text, name]) => parseTable(text, name)", [text, name])
    records = [r for r in csv.reader(io.StringIO(text.lstrip("\ufeff")), delimiter=delimiter) if r]
    assert got == {"columns": records[0], "rows": records[1:]}


def test_the_pages_jsonl_parser(tab: Page) -> None:
    page = tab.open()
    text = '{"a": "x", "b": 1}\n\n{"a": "y", "c": {"k": null}}\n'
    got = page.evaluate("text => parseTable(text, 'x.jsonl')", text)
    assert got == {"columns": ["a", "b", "c"], "rows": [["x", "1", ""], ["y", "", '{"k":null}']]}
    message = page.evaluate(
        "() => { try { parseTable('{}\\n[1]', 'x.jsonl') } catch (e) { return e.message } }"
    )
    assert message == "line 2 is not a JSON object"


def test_a_dropped_file_is_read(tab: Page) -> None:
    page = tab.open()
    page.evaluate(
        """() => {
        const data = new DataTransfer();
        data.items.add(new File(['id,headline\\n1,Nice\\n'], 'dropped.csv', {type: 'text/csv'}));
        document.querySelector('#drop').dispatchEvent(new DragEvent('drop', {dataTransfer: data}));
    }"""
    )
    page.wait_for_selector("#run:enabled")
    assert page.inner_text("#file-status") == "dropped.csv: 1 row, 2 columns"
    assert page.eval_on_selector_all("#columns option:checked", "o => o.map(x => x.text)") == [
        "headline"
    ]


def test_a_refused_chunk_names_its_rows(tab: Page, tmp_path: Path) -> None:
    # JSON may escape a lone surrogate; the server refuses it (422) and the page says which rows.
    lines = ['{"headline": "Ok", "review_body": "It was fine."}'] * 9
    lines.append('{"headline": "Bad", "review_body": "It was \\ud800."}')
    source = tmp_path / "bad.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    page = tab.open()
    page.set_input_files("#file", str(source))
    page.wait_for_selector("#run:enabled")
    page.click("#run")
    page.wait_for_selector("#error:visible")
    assert page.inner_text("#error") == "rows 9-10: error 422: texts[1] is not valid Unicode"
    assert page.is_enabled("#run")  # the page is usable again
    tab.errors.clear()  # Chromium logs the refused request as a console error


def test_server_errors_are_one_line(tab: Page, clf: Classifier) -> None:
    page = tab.open()
    page.fill("#text", "x" * (LIMITS.max_chars + 1))
    page.click("#one button")
    page.wait_for_selector("#error:visible")
    assert page.inner_text("#error") == "error 413: 2001 characters; at most 2000 per request"
    tab.screenshot("error-413")
    # 422: a lone surrogate cannot be sent as UTF-8; JSON.stringify escapes it, the server refuses
    page.evaluate("document.querySelector('#text').value = 'fine \\ud800'")
    page.click("#one button")
    page.wait_for_function("() => document.querySelector('#error').textContent.includes('422')")
    assert page.inner_text("#error") == "error 422: texts[0] is not valid Unicode"
    page.fill("#text", "It was fine.")  # a good request clears the line
    page.press("#text", "Enter")
    page.wait_for_selector("#error", state="hidden")
    tab.errors.clear()  # Chromium logs each failed request as a console error


def test_a_server_that_went_down(browser, clf: Classifier) -> None:
    with running(create_app(clf, LIMITS)) as base:
        tab = Page(browser, base)
        page = tab.open()
    page.fill("#text", "It was fine.")
    page.press("#text", "Enter")
    page.wait_for_selector("#error:visible")
    assert page.inner_text("#error") == "cannot reach the server: is gptclf serve still running?"
    tab.screenshot("error-down")
    tab.close(errors_expected=True)


def test_phone_width(browser, url: str, clf: Classifier) -> None:
    tab = Page(browser, url, width=375)
    page = tab.open()
    page.fill("#text", "It was great love and perfect.")
    page.press("#text", "Enter")
    page.wait_for_selector("#result:visible")
    page.wait_for_function("() => [...document.images].every(i => i.complete)")
    # Nothing wider than the screen: no sideways scrolling (wide tables scroll in their box).
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    tab.screenshot("phone")
    tab.close()


def test_the_page_and_its_images(url: str, reviews_run: Path) -> None:
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as client:
        page = client.get("/")  # httpx accepts gzip and unpacks it
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src 'sha256-" in page.headers["content-security-policy"]
        assert "://" not in page.text  # nothing from elsewhere: no CDN, font or script URL
        assert page.headers["content-encoding"] == "gzip"
        assert int(page.headers["content-length"]) < 8_000  # a few KB on the wire
        plain = client.get("/", headers={"accept-encoding": "identity"})
        assert "content-encoding" not in plain.headers and plain.text == page.text
        info = client.get("/info").json()
        assert info["images"] == sorted(RUN_IMAGES)
        assert info["model"]["trainable"] == "last_block"
        roc = client.get("/run/roc.png")
        assert roc.headers["content-type"] == "image/png"
        assert roc.content == (reviews_run / "roc.png").read_bytes()
        for name in ("config.json", "model.safetensors", "..%2Fconfig.json", "%2Fetc%2Fpasswd"):
            response = client.get(f"/run/{name}")
            assert response.status_code == 404 and "error" in response.json()


def test_run_images_are_the_report_plots() -> None:
    from gptclf.run_report import PLOTS

    assert set(RUN_IMAGES) == set(PLOTS)


def test_no_ui(clf: Classifier) -> None:
    from gptclf.cli import build_parser

    assert build_parser().parse_args(["serve", "DIR", "--no-ui"]).ui is False
    assert build_parser().parse_args(["serve", "DIR"]).ui is True
    with running(create_app(clf, LIMITS, ui=False)) as base:
        with httpx.Client(base_url=base, timeout=30, trust_env=False) as client:
            assert client.get("/").status_code == 404
            assert client.get("/run/roc.png").status_code == 404
            assert client.get("/info").json()["images"] == []
            answer = client.post("/classify", json={"texts": ["It was fine."]})
            assert (
                answer.json()["predictions"][0]["label"] == clf.predict(["It was fine."])[0].label
            )


# --- a multi-label classifier: `labels` (zero or more) and each label's own probability -------


@pytest.fixture(scope="module")
def multi_clf(multilabel_run: Path) -> Classifier:
    return Classifier.load(multilabel_run)


@pytest.fixture(scope="module")
def multi_url(multi_clf: Classifier) -> Iterator[str]:
    with running(create_app(multi_clf, LIMITS)) as base:
        yield base


def test_multi_label_texts_show_every_chosen_label(browser, multi_url: str, multi_clf) -> None:
    tab = Page(browser, multi_url)
    page = tab.open()
    card = dict(
        zip(
            page.locator("#card dt").all_inner_texts(),
            page.locator("#card dd").all_inner_texts(),
            strict=True,
        )
    )
    thresholds = dict(zip(multi_clf.labels, multi_clf.thresholds, strict=True))
    assert card["thresholds"] == ", ".join(
        f"{n} {float(f'{t:.3f}'):g}" for n, t in thresholds.items()
    )
    subset = page.locator("#metrics tr", has_text="subset accuracy").locator("td")
    expected_subset = [multi_clf.metrics[s]["subset_accuracy"] for s in ("validation", "test")]
    assert subset.all_inner_texts() == [f"{100 * a:.2f}%" for a in expected_subset]
    # several labels and one: the model's own answers to these (checked, not assumed)
    texts = ["pizza soup cake lunch cash", "cash prize and pay"]
    expected = multi_clf.predict(texts)
    assert len(expected[0].labels) >= 2 and len(expected[1].labels) == 1
    for i, (text, want) in enumerate(zip(texts, expected, strict=True)):
        page.fill("#text", text)
        page.press("#text", "Enter")
        page.wait_for_function(
            "n => document.querySelectorAll('#history li').length === n", arg=i + 1
        )
        shown = shown_prediction(page)
        assert shown["label"] == (", ".join(want.labels) or "no label")
        assert list(shown["bars"]) == multi_clf.labels
        for name, (p, text_shown) in shown["bars"].items():
            assert p == pytest.approx(want.probabilities[name], abs=1e-5)
            assert text_shown == percent(want.probabilities[name])
        top = page.eval_on_selector_all("#bars .top", "rows => rows.map(r => r.dataset.label)")
        assert sorted(top) == sorted(want.labels)
        marks = page.eval_on_selector_all(
            "#bars .bar", "rows => rows.map(r => Number(r.dataset.threshold))"
        )
        assert marks == pytest.approx(multi_clf.thresholds)
        if i == 0:
            tab.screenshot("multi-label")
    history = page.locator("#history li").all_inner_texts()
    assert (
        history
        == [f"{', '.join(p.labels)} — {t}" for t, p in zip(texts, expected, strict=True)][::-1]
    )
    # no label reaches its threshold (this tiny model always finds one: a prediction as sent)
    none = {"labels": [], "probabilities": dict.fromkeys(multi_clf.labels, 0.01)}
    page.evaluate("p => showPrediction(p)", none)
    assert page.inner_text("#label") == "no label" and page.locator("#bars .top").count() == 0
    tab.close()


def test_a_multi_label_file_is_classified_like_predict_file(
    browser, multi_url: str, multi_clf: Classifier, tmp_path: Path
) -> None:
    from fixtures_multilabel import topics, write_topics

    rows = topics(12, seed=5)
    rows[2] = {**rows[2], "message": ""}  # an empty text: left unlabelled
    source = write_topics(tmp_path / "new.csv", rows)
    expected_file = tmp_path / "expected.csv"
    multi_clf.predict_file(source, expected_file)
    expected = list(csv.DictReader(expected_file.open(newline="", encoding="utf-8")))
    tab = Page(browser, multi_url)
    page = run_file(tab, source)
    with page.expect_download() as download:
        page.click("#download")
    got = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text("utf-8"))))
    assert list(got[0]) == list(expected[0]) and "predicted_labels" in got[0]
    assert [g["predicted_labels"] for g in got] == [e["predicted_labels"] for e in expected]
    assert any("|" in e["predicted_labels"] for e in expected)  # several labels in a cell
    for g, e in zip(got, expected, strict=True):
        for name in [f"probability_{n}" for n in multi_clf.labels]:
            assert (g[name] == e[name] == "") or float(g[name]) == pytest.approx(
                float(e[name]), abs=1e-5
            )
    header = page.locator("#table thead th").all_inner_texts()
    cells = page.locator("#table tbody tr").nth(0).locator("td").all_inner_texts()
    shown = dict(zip(header, cells, strict=True))
    assert shown["predicted_labels"] == expected[0]["predicted_labels"]
    assert shown["probability_money"] == percent(float(expected[0]["probability_money"]))
    tab.close()
