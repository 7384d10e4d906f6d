"""Drives Quarry's web console in a real browser (Debian's chromium, headless,
through its chromedriver) against a running three-node cluster.

Usage: browser_test.py HTTP_BASE NODE_PID_TO_KILL SCREENSHOT_DIR

Checks, in order: a query typed into the editor and run with Ctrl-Enter
shows its rows in the grid; a 1,000,000-row result keeps under 300 rows in
the DOM while the grid scrolls to its last row; the job of a query over a
table is in the history with its bytes processed; the explorer shows a
table's columns and snapshots; the cluster page shows the three nodes alive,
then the killed one down. Saves a screenshot of each page in SCREENSHOT_DIR.
"""

import json
import os
import signal
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.common.action_chains import ActionChains
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.support.ui import WebDriverWait

BASE, VICTIM, SHOTS = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.makedirs(SHOTS, exist_ok=True)


def api(sql):
    request = urllib.request.Request(
        BASE + "/v1/queries",
        data=json.dumps({"sql": sql, "timeout_ms": 60000}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=90) as response:
        return json.load(response)


def until(driver, what, check, timeout=60):
    # The pages re-render their tables: an element read as it is replaced
    # is read again.
    wait = WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException,))
    try:
        return wait.until(lambda d: check())
    except Exception as e:
        driver.save_screenshot(os.path.join(SHOTS, "failure.png"))
        raise AssertionError(f"timed out waiting for {what}: {e!r}") from e


def shot(driver, name):
    driver.save_screenshot(os.path.join(SHOTS, name))


def run_in_editor(driver, sql):
    editor = driver.find_element(By.CSS_SELECTOR, ".cm-content")
    editor.click()
    chain = ActionChains(driver)
    chain.key_down(Keys.CONTROL).send_keys("a").key_up(Keys.CONTROL).send_keys(Keys.DELETE)
    chain.send_keys(sql)
    # Close a completion popup, if one opened, before running.
    chain.send_keys(Keys.ESCAPE)
    chain.key_down(Keys.CONTROL).send_keys(Keys.ENTER).key_up(Keys.CONTROL)
    chain.perform()


def grid_cells(driver):
    rows = driver.find_elements(By.CSS_SELECTOR, "#grid .row")
    return [[c.text for c in r.find_elements(By.CSS_SELECTOR, ".cell")][1:] for r in rows]


def status(driver):
    return driver.find_element(By.ID, "status").text


def main():
    api("CREATE TABLE console_demo AS SELECT v, md5(v::text) AS note FROM generate_series(1, 50000) AS g(v)")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        driver.get(BASE + "/#query")
        until(driver, "the editor", lambda: driver.find_elements(By.CSS_SELECTOR, ".cm-content"))

        # Ctrl-Enter runs the editor's text; the grid shows its rows.
        run_in_editor(driver, "SELECT v, v * v AS sq FROM generate_series(1, 5) AS g(v) ORDER BY v")
        until(driver, "five rows", lambda: len(grid_cells(driver)) == 5 and "…" not in str(grid_cells(driver)))
        assert grid_cells(driver) == [[str(v), str(v * v)] for v in range(1, 6)], grid_cells(driver)
        shot(driver, "query.png")

        # A million rows: few in the DOM, the last one reachable.
        run_in_editor(driver, "SELECT v, v % 7 AS r FROM generate_series(1, 1000000) AS g(v) ORDER BY v")
        until(driver, "the million-row result", lambda: status(driver).startswith("done"))
        grid = driver.find_element(By.ID, "grid")
        assert grid.get_attribute("aria-rowcount") == "1000000"
        assert len(grid_cells(driver)) < 300
        for fraction in (0.25, 0.5, 1.0):
            driver.execute_script(
                "const g = arguments[0]; g.scrollTop = (g.scrollHeight - g.clientHeight) * arguments[1];",
                grid, fraction)
            time.sleep(0.2)
            assert len(driver.find_elements(By.CSS_SELECTOR, "#grid .row")) < 300
        until(driver, "the last row", lambda: ["1000000", str(1000000 % 7)] in grid_cells(driver))
        assert len(grid_cells(driver)) < 300, len(grid_cells(driver))
        shot(driver, "million-rows.png")

        # EXPLAIN ANALYZE as a tree with rows and time per operator.
        run_in_editor(driver, "EXPLAIN ANALYZE SELECT count(*) FROM console_demo WHERE v > 10")
        until(driver, "the plan tree", lambda: driver.find_elements(By.CSS_SELECTOR, "#plan li .badge"))
        badges = [b.text for b in driver.find_elements(By.CSS_SELECTOR, "#plan li .badge")]
        assert any(b.endswith(" rows") for b in badges), badges
        assert driver.find_elements(By.CSS_SELECTOR, "#plan li li"), "operators nest"
        shot(driver, "explain.png")

        # A query over a table, then its job in the history with its bytes.
        run_in_editor(driver, "SELECT count(*), max(note) FROM console_demo")
        until(driver, "the table query", lambda: status(driver).startswith("done"))
        processed = driver.find_element(By.ID, "stats").text
        assert "bytes processed 0 B" not in processed, processed
        driver.get(BASE + "/#history")
        driver.find_element(By.CSS_SELECTOR, "#history-filters input[name=text]").send_keys("console_demo")
        driver.find_element(By.CSS_SELECTOR, "#history-filters button[type=submit]").click()

        def history_row():
            for row in driver.find_elements(By.CSS_SELECTOR, "#history tbody tr"):
                cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
                if cells and cells[-1].startswith("SELECT count(*), max(note)"):
                    return row, cells
            return None

        row, cells = until(driver, "the job in the history", history_row)
        assert cells[3] == "SELECT" and cells[4] not in ("0 B", ""), cells
        until(driver, "the job's row clicked", lambda: history_row()[0].click() or True)
        until(driver, "the job's details", lambda: "bytes processed" in driver.find_element(By.ID, "job-detail").text)
        shot(driver, "history.png")

        # The explorer: columns, preview and snapshots of the table.
        driver.get(BASE + "/#explorer")
        until(driver, "the table in the tree", lambda: [
            b for b in driver.find_elements(By.CSS_SELECTOR, "#tree button") if b.text == "console_demo"])
        [b for b in driver.find_elements(By.CSS_SELECTOR, "#tree button") if b.text == "console_demo"][0].click()
        until(driver, "the table's details", lambda: "Snapshots" in driver.find_element(By.ID, "table-detail").text
              and "note" in driver.find_element(By.ID, "table-detail").text
              and "Query as of" in driver.find_element(By.ID, "table-detail").text)
        shot(driver, "explorer.png")

        # The cluster: three nodes alive, then the killed one down.
        driver.get(BASE + "/#cluster")

        def states():
            return [r.find_elements(By.TAG_NAME, "td")[1].text
                    for r in driver.find_elements(By.CSS_SELECTOR, "#nodes tbody tr")]

        until(driver, "three nodes alive", lambda: states() == ["alive"] * 3)
        time.sleep(2.5)  # a few points on the charts
        shot(driver, "cluster.png")
        os.kill(VICTIM, signal.SIGKILL)
        killed = time.monotonic()
        until(driver, "the killed node down", lambda: "down" in states(), timeout=30)
        print(f"down after {time.monotonic() - killed:.1f} s")
        shot(driver, "cluster-node-down.png")
    finally:
        driver.quit()
    print("console: ok")


main()
