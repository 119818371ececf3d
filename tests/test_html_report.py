"""The HTML reports in a real browser: Debian's headless Chromium, driven by Selenium.

Two studies' result folders are rebuilt from their committed runs.csv (no training; see
tests/test_report_regeneration.py), the quickstart one given metrics.jsonl lines, a failed run
(error.txt), an interrupted one (metrics, no result) and one not started (config.yaml only); then
`mimbench report` writes the pages and each is opened from disk (file://). Every image must load,
every local link must reach a file, the tables must hold a row per setting and per run, and the
browser must log no error. Screenshots go to build/screenshots/ (for a person to look at) and tmp_path.

Chromium and its driver are Debian's (`bash install.sh` installs them); Selenium is pointed at
them and must never fetch a driver (Selenium Manager is made to fail if called).
"""
import json
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd
import pytest
import yaml

from bench.cli import main
from test_report_regeneration import REPO, rebuild

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SCREENSHOTS = REPO / "build" / "screenshots"
ERROR_LINE = "RuntimeError: loss is nan at pre-training epoch 2 (lr too high?)"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium with its browser log kept; fails (never skips) without it."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common import selenium_manager
    except ImportError:
        missing.append("the selenium package")
    if missing:
        pytest.fail(f"the HTML report test needs {', '.join(missing)}: run `bash install.sh` "
                    "(apt-get install chromium chromium-driver; pip install -e '.[dev]')")

    def no_download(*args, **kwargs):
        raise AssertionError("Selenium Manager was called: the driver must be /usr/bin/chromedriver")
    patch = pytest.MonkeyPatch()
    patch.setattr(selenium_manager.SeleniumManager, "binary_paths", no_download)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,900", "--hide-scrollbars",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    patch.undo()


def metrics_lines(pretrain_epochs: int, loss0: float, probe_epochs: int = 2, finetune_epochs: int = 1) -> str:
    """metrics.jsonl as a run writes it: one line per epoch and phase."""
    rows, wall = [], 0.0
    for phase, epochs, lr in (("pretrain", pretrain_epochs, 1.5e-3), ("linear_probe", probe_epochs, 0.3),
                              ("finetune", finetune_epochs, 4e-3)):
        for epoch in range(1, epochs + 1):
            wall += 50.0
            rows.append({"epoch": epoch, "images_per_s": 180.0, "loss": loss0 / epoch, "lr": lr * epoch / epochs,
                         "phase": phase, "wall_s": wall})
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)


def quickstart_study(root: Path) -> tuple[Path, dict]:
    """The committed quickstart's runs, plus a failed, an interrupted and a not-started run."""
    study_dir = rebuild("quickstart", REPO / "ablations/quickstart.yaml", root)
    frame = pd.read_csv(REPO / "reports/quickstart/runs.csv")
    done = list(frame["run_id"])
    for i, rid in enumerate(done[:3]):  # the three settings; the baselines have no curves
        (study_dir / rid / "metrics.jsonl").write_text(metrics_lines(4, 0.9 + 0.1 * i))
    config = yaml.safe_load((study_dir / done[0] / "config.yaml").read_text())
    extra = {"failed0000001": "failed", "interrupted01": "interrupted", "notstarted01": "to do"}
    for rid, seed in zip(extra, (1, 2, 3)):
        folder = study_dir / rid
        folder.mkdir()
        (folder / "config.yaml").write_text(yaml.safe_dump(config | {"seed": seed}, sort_keys=True))
    (study_dir / "failed0000001" / "metrics.jsonl").write_text(metrics_lines(1, 1.2, 0, 0))
    (study_dir / "failed0000001" / "error.txt").write_text(
        f"phase: pretrain\nhost: vm pid 1 at 2024-01-01 00:00:00\nTraceback (most recent call last):\n"
        f'  File "bench/train/pretrain.py", line 1, in step\n{ERROR_LINE}\n')
    (study_dir / "interrupted01" / "metrics.jsonl").write_text(metrics_lines(2, 1.0, 0, 0))
    manifest = json.loads((study_dir / "study.json").read_text())
    manifest["runs"] += list(extra)
    (study_dir / "study.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return study_dir, {rid: "done" for rid in done} | extra


def local_path(url: str) -> Path | None:
    """The file a file:// URL names (None for another scheme)."""
    parsed = urlparse(url)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None


def open_page(driver, page: Path, shot_name: str, tmp_path: Path):
    """Load `page`, check its images, links and the browser log; save a full-page screenshot."""
    driver.get_log("browser")  # drop what earlier pages logged
    driver.set_window_size(1280, 900)
    driver.get(page.resolve().as_uri())
    assert driver.title, page
    for img in driver.find_elements("tag name", "img"):
        width = driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
        assert width and width > 0, f"{page}: image {img.get_attribute('src')} did not load"
        assert local_path(img.get_attribute("src")) is not None  # nothing from the network
    for a in driver.find_elements("tag name", "a"):
        href = a.get_attribute("href")
        target = local_path(href)
        assert target is not None, f"{page}: a link leaves the disk: {href}"
        assert target.exists(), f"{page}: link {a.get_attribute('outerHTML')} -> {target} does not exist"
    assert not driver.find_elements("tag name", "script")
    assert not driver.find_elements("css selector", "link[href^='http'], [src^='http']")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(height + 40, 12000))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(SCREENSHOTS / f"{shot_name}.png"))
    shutil.copy(SCREENSHOTS / f"{shot_name}.png", tmp_path / f"{shot_name}.png")
    severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not severe, f"{page}: console errors {severe}"


def rows(driver, selector: str) -> list:
    return driver.find_elements("css selector", selector)


def test_study_pages_and_index_in_chromium(browser, tmp_path, capsys):
    study_dir, states = quickstart_study(tmp_path)
    table1c = rebuild("mae_table1c_mask_token-small", REPO / "ablations/mae/table1c_mask_token.yaml", tmp_path)
    reports = tmp_path / "reports"
    reports.mkdir()
    for name in ("scorecard.csv", "scorecard.md"):
        shutil.copy(REPO / "reports" / name, reports / name)

    assert main(["report", str(study_dir), "--reports", str(reports)]) == 0
    printed = capsys.readouterr().out
    assert str(reports / "quickstart" / "index.html") in printed.replace("\n", "")
    assert main(["report", str(table1c), "--reports", str(reports)]) == 0
    capsys.readouterr()
    assert (reports / "quickstart" / "curves.png").exists()
    assert not (reports / "mae_table1c_mask_token-small" / "curves.png").exists()  # no metrics.jsonl there

    # the quickstart: curves, a failed, an interrupted and an unstarted run
    open_page(browser, reports / "quickstart" / "index.html", "quickstart", tmp_path)
    summary = len(pd.read_csv(reports / "quickstart" / "table.csv"))
    assert len(rows(browser, "#summary table tbody tr")) == summary == 3
    run_rows = rows(browser, "#run-table tr.run")
    assert len(run_rows) == len(states) == 8
    shown = {r.find_element("css selector", "td.runid").text: r.find_element("css selector", ".state").text
             for r in run_rows}
    assert shown == states
    failed = browser.find_element("css selector", "#run-table tr.run-failed + tr.detail")
    assert ERROR_LINE in failed.text
    interrupted = browser.find_element("css selector", "#run-table tr.run-interrupted")
    assert "so far" in interrupted.text
    names = [img.get_attribute("src").rsplit("/", 1)[1] for img in browser.find_elements("tag name", "img")]
    assert names == ["plot.png", "curves.png"]  # quickstart names no paper: no comparison
    assert browser.find_elements("css selector", "#baselines table")
    baselines = [r.find_elements("tag name", "td")[2].text for r in run_rows]  # the column after the run id
    assert baselines == ["", "", "", "random_init", "raw_pixels", "", "", ""]
    config_links = [a.get_attribute("href") for a in browser.find_elements("css selector", "#run-table a")
                    if a.text == "config.yaml"]
    assert len(config_links) == 8 and local_path(config_links[0]).parent.parent == study_dir.resolve()

    # a study with a paper: the comparison and its picture
    open_page(browser, reports / "mae_table1c_mask_token-small" / "index.html", "mae_table1c_mask_token-small", tmp_path)
    assert len(rows(browser, "#summary table tbody tr")) == 2
    assert len(rows(browser, "#run-table tr.run")) == 12  # 6 runs and 6 baseline runs
    names = [img.get_attribute("src").rsplit("/", 1)[1] for img in browser.find_elements("tag name", "img")]
    assert names == ["plot.png", "comparison.png"]
    assert "Kendall" in browser.find_element("id", "paper").text
    assert "Baselines" not in browser.find_element("id", "paper").text  # in its own section

    # the index of studies, with the scorecard
    open_page(browser, reports / "index.html", "index", tmp_path)
    studies = rows(browser, "#study-table tbody tr")
    assert [r.find_element("tag name", "td").text for r in studies] == ["mae_table1c_mask_token-small", "quickstart"]
    assert "5 of 8 runs done" in studies[1].text and "1 failed" in studies[1].text
    best = pd.read_csv(REPO / "reports/quickstart/table.csv").sort_values("finetune_mean").iloc[-1]
    assert f"best fine-tune top-1: {best['finetune_mean']:.1f}, mask sampling = {best['masking.strategy']}" \
        in studies[1].text  # the committed quickstart's best
    assert "Kendall's tau vs the paper: ft 1.00, lin 1.00" in studies[0].text
    assert len(rows(browser, "#scorecard-table tbody tr")) == len(pd.read_csv(REPO / "reports/scorecard.csv"))
