"""The /ui page in a real headless browser (Debian's chromium + chromedriver, via selenium),
against the real ``tta-serve http`` process of the HTTP tests and real digit images.

Chromium is a system package: ``scripts/test.sh`` installs it (``scripts/install_browser.sh``)
when it is missing, so CI runs these tests. Without it they fail, naming the fix, rather than
skip silently; set TTA_SERVE_SKIP_BROWSER_TESTS=1 to skip them on purpose.
"""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from http_testkit import HttpServer
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from service_testkit import FixtureModel

WAIT_S = 60  # two busy cores: an evaluation of a few hundred images takes seconds


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    if os.environ.get("TTA_SERVE_SKIP_BROWSER_TESTS") == "1":
        pytest.skip("TTA_SERVE_SKIP_BROWSER_TESTS=1")
    pytest.fail("the /ui browser tests need chromium and chromedriver: run "
                "scripts/install_browser.sh (apt-get install chromium chromium-driver), or set "
                "TTA_SERVE_SKIP_BROWSER_TESTS=1 to skip them")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    binary, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    # The network is closed: no first-run, sync, component updates or background requests.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--window-size=1200,900",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=driver_path,
                                      log_output=str(tmp_path_factory.mktemp("chromedriver")
                                                     / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: webdriver.Chrome, condition, message: str):  # noqa: ANN001, ANN202
    return WebDriverWait(driver, WAIT_S).until(condition, message)


def _open(driver: webdriver.Chrome, server: HttpServer) -> None:
    driver.get(f"{server.base_url}/ui")  # redirected to /ui/
    _wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"),
          "the page did not load the model list")
    assert driver.current_url == f"{server.base_url}/ui/"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def test_predict_real_digits_and_a_bad_file(browser: webdriver.Chrome, http_server: HttpServer,
                                            digits_model: FixtureModel, tmp_path: Path):
    _open(browser, http_server)
    paths = []
    for image, label in digits_model.samples[2:5]:
        path = tmp_path / f"digit-{label}.png"
        path.write_bytes(image)
        paths.append(path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not an image")
    browser.find_element(By.ID, "predict-files").send_keys(
        "\n".join(str(p) for p in [*paths, broken]))
    assert browser.find_element(By.ID, "predict-chosen").text == "4 images chosen"
    browser.find_element(By.ID, "predict-tta").click()
    browser.find_element(By.ID, "predict-submit").click()
    _wait(browser, lambda d: d.find_element(By.ID, "predict-status").text.startswith("Done"),
          "the predictions did not finish")
    assert "3 of 4 classified, 1 failed" in browser.find_element(By.ID, "predict-status").text
    results = browser.find_elements(By.CSS_SELECTOR, "#predict-results > li")
    assert len(results) == 4
    for result, (_, label) in zip(results[:3], digits_model.samples[2:5], strict=True):
        assert result.find_element(By.CSS_SELECTOR, ".label").text.split()[0] == label
        assert len(result.find_elements(By.CSS_SELECTOR, ".bars meter")) == 5
        assert "digits v1 · TTA, 6 views ·" in result.find_element(By.CSS_SELECTOR, ".meta").text
    message = results[3].find_element(By.CSS_SELECTOR, ".message").text
    assert "error" in results[3].get_attribute("class")
    assert message.startswith("Error 400:") and "not a recognised image format" in message


def _zip_of_class_folders(items: list[tuple[bytes, str]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for i, (image, label) in enumerate(items):
            zf.writestr(f"valid/{label}/{i:04d}.png", image)
    return buffer.getvalue()


def test_evaluate_a_zip_shows_the_report(browser: webdriver.Chrome, http_server: HttpServer,
                                         digits_model: FixtureModel, tmp_path: Path):
    _open(browser, http_server)
    browser.find_element(By.ID, "tab-evaluate").click()
    archive = tmp_path / "valid.zip"
    archive.write_bytes(_zip_of_class_folders(digits_model.valid))
    browser.find_element(By.ID, "evaluate-zip").send_keys(str(archive))
    browser.find_element(By.ID, "evaluate-submit").click()
    accuracy = _wait(browser, lambda d: d.find_elements(By.ID, "evaluate-accuracy"),
                     "no evaluation report appeared")[0].text
    labels = np.array([int(y) for _, y in digits_model.valid])
    assert accuracy == _pct(float((digits_model.valid_pred == labels).mean()))
    assert f"on {len(labels)} images" in browser.find_element(By.ID, "evaluate-report").text
    rows = browser.find_elements(By.CSS_SELECTOR, "#evaluate-per-class tbody tr")
    assert [r.find_element(By.TAG_NAME, "th").text for r in rows] == list(
        digits_model.card.classes)
    _wait(browser, lambda d: d.execute_script(
        "return document.getElementById('evaluate-confusion').naturalWidth") > 100,
        "the confusion matrix picture did not load")
    # The download is a standalone HTML report with the picture inside.
    link = browser.find_element(By.ID, "evaluate-download")
    assert link.get_attribute("download") == "evaluation-digits-v1.html"
    html = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0]).then(r => r.text()).then(done);", link.get_attribute("href"))
    assert accuracy in html and "data:image/png;base64,iVBOR" in html


def test_evaluate_picked_files_and_a_wrong_label(browser: webdriver.Chrome,
                                                http_server: HttpServer,
                                                digits_model: FixtureModel, tmp_path: Path):
    _open(browser, http_server)
    browser.find_element(By.ID, "tab-evaluate").click()
    browser.find_element(By.CSS_SELECTOR, 'input[name="evaluate-source"][value="files"]').click()
    paths = []
    for image, label in digits_model.samples[:3]:
        path = tmp_path / f"{label}_sample.png"  # the page guesses the label from the name
        path.write_bytes(image)
        paths.append(path)
    browser.find_element(By.ID, "evaluate-files").send_keys("\n".join(map(str, paths)))
    inputs = browser.find_elements(By.CSS_SELECTOR, ".label-input")
    assert [i.get_attribute("value") for i in inputs] == ["0", "1", "2"]
    browser.find_element(By.ID, "evaluate-submit").click()
    _wait(browser, lambda d: d.find_elements(By.ID, "evaluate-accuracy"), "no report")
    assert browser.find_element(By.ID, "evaluate-accuracy").text == "100.0%"
    # A label that is not a class: the server's 400 message, shown as it is.
    inputs[1].clear()
    inputs[1].send_keys("seven")
    browser.find_element(By.ID, "evaluate-submit").click()
    status = browser.find_element(By.ID, "evaluate-status")
    _wait(browser, lambda d: status.text.startswith("Error"), "no error shown")
    assert status.text.startswith("Error 400:") and "'seven' is not a class of" in status.text
    assert browser.find_element(By.ID, "evaluate-report").text == ""


def test_models_tab_and_keyboard(browser: webdriver.Chrome, http_server: HttpServer,
                                 digits_model: FixtureModel):
    _open(browser, http_server)
    predict_tab = browser.find_element(By.ID, "tab-predict")
    predict_tab.send_keys(Keys.ARROW_RIGHT)
    assert browser.switch_to.active_element.get_attribute("id") == "tab-evaluate"
    assert browser.find_element(By.ID, "panel-evaluate").is_displayed()
    browser.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)
    assert browser.find_element(By.ID, "tab-models").get_attribute("aria-selected") == "true"
    text = _wait(browser, lambda d: d.find_element(By.ID, "models-list").text,
                 "the models panel stayed empty")
    metrics = digits_model.card.metrics
    assert "digits" in text and "CPUExecutionProvider" in text
    assert _pct(metrics["accuracy"]) in text and _pct(metrics["tta_accuracy"]) in text
    assert "center, zoom_center" in text


def test_fits_a_phone_screen(browser: webdriver.Chrome, http_server: HttpServer):
    browser.set_window_size(390, 844)
    try:
        for tab in ("tab-predict", "tab-evaluate", "tab-models"):
            _open(browser, http_server)
            browser.find_element(By.ID, tab).click()
            overflow = browser.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{tab}: {overflow} px wider than the screen"
    finally:
        browser.set_window_size(1200, 900)


@pytest.mark.parametrize("operation, expected", [
    ("operations-Classify_and_evaluate-tta_serve__predict", '"label": "7"'),
    ("operations-Classify_and_evaluate-tta_serve__evaluate", '"accuracy": 1'),
    ("operations-Models-get_model", '"name": "digits"'),
])
def test_swagger_try_it_out_works_as_it_is(browser: webdriver.Chrome, http_server: HttpServer,
                                           operation: str, expected: str):
    """The API reference at /: "Try it out", then "Execute" without editing anything -> 200."""
    browser.get(f"{http_server.base_url}/")
    _wait(browser, lambda d: d.find_elements(By.ID, operation), "Swagger UI did not render")
    assert browser.find_element(By.CSS_SELECTOR, ".info .title").text.startswith("tta-serve")
    block = browser.find_element(By.ID, operation)
    block.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    _wait(browser, lambda d: block.find_elements(By.CSS_SELECTOR, ".try-out__btn"), "no button")
    block.find_element(By.CSS_SELECTOR, ".try-out__btn").click()
    _wait(browser, lambda d: block.find_elements(By.CSS_SELECTOR, ".execute"), "no Execute")
    block.find_element(By.CSS_SELECTOR, ".execute").click()
    status = _wait(browser, lambda d: block.find_elements(
        By.CSS_SELECTOR, ".live-responses-table tbody .response-col_status"), "no response")
    body = block.find_element(By.CSS_SELECTOR, ".live-responses-table tbody .microlight").text
    assert status[0].text.strip().startswith("200"), body[:300]
    assert expected in body


def test_models_tab_shows_the_served_variant(browser: webdriver.Chrome, http_server: HttpServer):
    """The bundled digits model served as its int8 variant, as /models describes it."""
    from service_testkit import REPO_ROOT, core_config

    from service.core import InferenceCore
    from service.http.schema import model_info_body

    config = core_config(REPO_ROOT / "models", variant="int8", default_model="digits")
    with InferenceCore.create(config).start() as core:
        body = {"models": [model_info_body(core.get_model("digits")).model_dump(mode="json")]}
    recorded = body["models"][0]["variants"]["int8"]
    _open(browser, http_server)
    browser.find_element(By.ID, "tab-models").click()  # loads the fixture server's models first
    _wait(browser, lambda d: d.find_element(By.ID, "models-list").text and not d.find_element(
        By.TAG_NAME, "body").get_attribute("data-models-loading"), "no models shown")
    browser.execute_script("renderModels(arguments[0])", body)
    text = browser.find_element(By.ID, "models-list").text
    served = body["models"][0]["version"]  # the newest bundled version
    assert f"v{served} (int8 variant)" in text
    if body["models"][0]["calibration"]["calibrated"]:  # digits v2: calibrated, says how
        assert "Calibration temperature" in text and "ECE (held-out)" in text
        assert "Default TTA mode auto" in text
    row = next(r for r in browser.find_elements(By.CSS_SELECTOR, "#models-list .metrics tr")
               if r.text.startswith("int8"))
    assert _pct(recorded["accuracy"]) in row.text and _pct(1.0) in row.text


@pytest.fixture(scope="module")
def token_server(digits_model: FixtureModel,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    """``tta-serve http`` checking tokens (issue 27): one infer token, from the variable."""
    from http_testkit import ServerProcess, free_port

    port = free_port()
    process = ServerProcess(
        ["http", "--host", "127.0.0.1", "--port", str(port), "--grace-s", "2",
         "--models-dir", str(digits_model.repo_root), "--device", "cpu"],
        tmp_path_factory.mktemp("token-server"),
        env={"TTA_SERVE_TOKENS": f"{PAGE_TOKEN} infer"})
    base_url = f"http://127.0.0.1:{port}"
    try:
        process.wait_http_ready(base_url)
        yield HttpServer(process, base_url)
    finally:
        assert process.terminate() == 0, process.log


PAGE_TOKEN = "page-token-0123456789abcdefghij"


def test_the_page_asks_for_a_token_and_sends_it(browser: webdriver.Chrome,
                                                token_server: HttpServer,
                                                digits_model: FixtureModel, tmp_path: Path):
    _open(browser, token_server)  # the page itself is open; its API calls are not
    assert browser.find_element(By.ID, "token-status").text == (
        "this server asks for an access token")
    status = browser.find_element(By.ID, "models-status").get_attribute("textContent")
    assert status.startswith("Error 401:") and "access token" in status
    browser.find_element(By.ID, "token").send_keys(PAGE_TOKEN)
    browser.find_element(By.ID, "token-submit").click()
    _wait(browser, lambda d: "digits" in d.find_element(By.ID, "models-list").get_attribute(
        "textContent"), "the models did not load with the token")  # the Models tab is hidden
    assert browser.find_element(By.ID, "token-status").text == "token in use (this tab)"
    assert browser.execute_script(
        "return sessionStorage.getItem('tta-serve-token')") == PAGE_TOKEN
    image, label = digits_model.samples[5]
    path = tmp_path / "digit.png"
    path.write_bytes(image)
    browser.find_element(By.ID, "predict-files").send_keys(str(path))
    browser.find_element(By.ID, "predict-submit").click()
    _wait(browser, lambda d: d.find_element(By.ID, "predict-status").text.startswith("Done"),
          "the prediction did not finish")
    result = browser.find_element(By.CSS_SELECTOR, "#predict-results > li .label")
    assert result.text.split()[0] == label
    # the infer token cannot evaluate (admin): the server's 403 message is shown
    browser.find_element(By.ID, "tab-evaluate").click()
    archive = tmp_path / "valid.zip"
    archive.write_bytes(_zip_of_class_folders(digits_model.valid[:5]))
    browser.find_element(By.ID, "evaluate-zip").send_keys(str(archive))
    browser.find_element(By.ID, "evaluate-submit").click()
    evaluate_status = browser.find_element(By.ID, "evaluate-status")
    _wait(browser, lambda d: evaluate_status.text.startswith("Error"), "no error shown")
    assert evaluate_status.text.startswith("Error 403:") and "'admin' scope" in \
        evaluate_status.text
    # the token lives as long as the tab: a reload keeps it
    _open(browser, token_server)
    assert browser.find_element(By.ID, "token").get_attribute("value") == PAGE_TOKEN
    browser.execute_script("sessionStorage.clear()")
