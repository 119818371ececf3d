"""Screenshot a report page in Debian's headless Chromium (the README's picture of the quickstart page).

    python3 scripts/screenshot.py reports/quickstart/index.html docs/quickstart-report.png [--height 1600]

The page is opened from disk as a browser would; the picture is its top `--height` pixels (0: all
of it) at 1280 px wide. Needs /usr/bin/chromium and /usr/bin/chromedriver (`bash install.sh`).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1600, help="pixels from the top; 0: the whole page")
    args = parser.parse_args(argv)
    if not args.page.is_file():
        print(f"screenshot.py: {args.page} is not a file", file=sys.stderr)
        return 2
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory() as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--hide-scrollbars", f"--window-size={args.width},900", f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
        try:
            driver.get(args.page.resolve().as_uri())
            full = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(args.width, min(full, args.height) if args.height else full)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.out))
        finally:
            driver.quit()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
