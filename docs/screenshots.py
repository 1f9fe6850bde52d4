"""Screenshots of the TensorBoard dashboards of a `bn-keras compare` run.

    make screenshots                  # a fresh demo run, then the PNGs
    python docs/screenshots.py --session runs/compare-digits-...  # reuse

Trains the comparison of `make demo` (whose arguments the Makefile passes
as `--demo-args`, so that they are written once), unless `--session` names
one; serves
it with TensorBoard on 127.0.0.1 (a free port), drives Debian's headless
Chromium through selenium and saves, in `docs/images`, each page as a
person gets it when they open it (no runs filtered, nothing collapsed or
resized by the script):

- `overview.png`: Custom Scalars as it opens, on its Overview category
  (the alerts, the best validation accuracy, the epoch curves and the
  model-wide BN figures, across the configurations); it prints how many
  seconds the Overview took to draw, from the page's opening;
- `layer.png`: the category of the first BN layer after the input,
  opened by a click on its title as a person opens it;
- `hparams.png`: the HParams table, the objective first;
- `text.png`: the Text dashboard: a configuration's layers, where each
  sits in the built graph, and its alerts with what to do.

It runs in an interpreter that has selenium and Pillow (`make screenshots`
makes one, `.venv-screenshots`, apart from the package's environment); the
demo run and TensorBoard run in `--python`, the project's. Needs `chromium` and
`chromium-driver` (`apt-get install chromium chromium-driver`). Not part of
`make test`.
"""

import argparse
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Headless pages count as hidden: without these, the charts' timers
    # are throttled and a page takes minutes to draw.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--hide-scrollbars",
]
LOAD_TIMEOUT_S = 180
#: Seconds a page is left to lay out its charts once their data is loaded.
SETTLE_S = 5

# JavaScript: every element under `root`, through shadow roots, that
# `test` accepts (TensorBoard's Polymer dashboards live in shadow DOM).
_DEEP = """
function deepAll(root, test) {
  const found = [];
  const walk = (node) => {
    if (node.nodeType === 1 && test(node)) found.push(node);
    if (node.shadowRoot) walk(node.shadowRoot);
    for (const child of node.children || []) walk(child);
  };
  walk(root);
  return found;
}
"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--session",
        help="an existing `bn-keras compare` folder (default: train the "
        "demo's comparison into a temporary folder)",
    )
    parser.add_argument(
        "--demo-args",
        help="the arguments of `bn-keras compare` that `make demo` runs "
        "(`make screenshots` passes them); needed without --session",
    )
    parser.add_argument(
        "--python",
        default=os.path.join(REPO, ".venv", "bin", "python"),
        help="the interpreter with bn_keras and TensorBoard (default: "
        ".venv/bin/python)",
    )
    parser.add_argument(
        "--out",
        default=os.path.join(REPO, "docs", "images"),
        help="folder of the PNGs (default: docs/images)",
    )
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = parser.parse_args(argv)
    if args.session is None and not args.demo_args:
        parser.error(
            "give --session (a compare folder) or --demo-args (the demo's "
            "`bn-keras compare` arguments; `make screenshots` passes them)"
        )
    return args


def train_demo(python, demo_args, logdir):
    """Runs the demo's comparison into `logdir`; returns its folder."""
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    command = [python, "-m", "bn_keras", "compare", *demo_args.split()]
    subprocess.run(
        [*command, "--logdir", logdir], check=True, cwd=REPO, env=env
    )
    (session,) = glob.glob(os.path.join(logdir, "compare-digits-*"))
    return session


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read().decode())


def start_tensorboard(python, session, log):
    """TensorBoard on a free port of 127.0.0.1, once it has every run.

    Started in the session's parent folder with a relative `--logdir`, so
    that the page shows the session's name rather than a temporary path.
    """
    port = free_port()
    server = subprocess.Popen(
        [
            python, "-m", "tensorboard.main",
            "--logdir", os.path.basename(session),
            "--host", "127.0.0.1", "--port", str(port),
        ],
        cwd=os.path.dirname(os.path.abspath(session)),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    runs = {
        os.path.relpath(os.path.dirname(path), session)
        for path in glob.glob(
            os.path.join(session, "**", "events.out.tfevents.*"),
            recursive=True,
        )
    }
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("TensorBoard stopped")
        try:
            if set(get_json(f"{base}/data/runs")) >= runs:
                return server, base
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"TensorBoard did not load the {len(runs)} runs")


def open_chromium(args, width, height):
    options = webdriver.ChromeOptions()
    options.binary_location = args.chromium
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(
        service=Service(args.chromedriver), options=options
    )
    return driver, profile


def save(driver, path):
    """A screenshot of the window, in 256 colours (a third of the size)."""
    driver.save_screenshot(path)
    image = Image.open(path).convert("RGB")
    image.quantize(colors=256, dither=Image.Dither.NONE).save(
        path, optimize=True
    )


def wait_until(driver, script, what, settle=True):
    """Waits until the JavaScript `script` (with `deepAll`) is true;
    returns the seconds it took."""
    start = time.monotonic()
    deadline = start + LOAD_TIMEOUT_S
    while not driver.execute_script(_DEEP + script):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the page did not show {what}")
        time.sleep(0.25)
    waited = time.monotonic() - start
    if settle:
        # The data is in; the charts still lay themselves out (a chart
        # photographed too early is drawn at a fraction of its size).
        time.sleep(SETTLE_S)
    return waited


# JavaScript: whether every chart on show has drawn its data.
_CHARTS_DRAWN = """
const loaders = deepAll(document, n =>
  n.tagName === 'TF-LINE-CHART-DATA-LOADER' && n.offsetParent !== null);
return loaders.length > 0 &&
  loaders.every(n => n.dataLoadedAtLeastOnce && !n.dataLoading);
"""


# JavaScript: the Custom Scalars categories, in order.
_CATEGORIES = (
    "deepAll(document, n => n.tagName === 'TF-CATEGORY-PAGINATED-VIEW')"
)


def custom_scalars(driver, base, out):
    """The Overview as Custom Scalars opens (timed from the page's
    opening), then the first BN layer's category, opened by a click on its
    title."""
    start = time.monotonic()
    driver.get(f"{base}/#custom_scalars")
    wait_until(
        driver, f"return {_CATEGORIES}.length > 1;", "the categories", False
    )
    wait_until(driver, _CHARTS_DRAWN, "the Overview's charts", False)
    loaded = time.monotonic() - start
    time.sleep(SETTLE_S)
    titles = driver.execute_script(
        _DEEP + f"return {_CATEGORIES}.map(n => n.category.name);"
    )
    opened = driver.execute_script(
        _DEEP + f"return {_CATEGORIES}.map(n => n.opened);"
    )
    path = os.path.join(out, "overview.png")
    save(driver, path)
    print(
        f"{path}: Custom Scalars as it opens (categories open: "
        f"{[t for t, o in zip(titles, opened) if o]}); the Overview's charts "
        f"drew {loaded:.1f} s after the page was opened"
    )
    # A person opens a layer's category by clicking its title: the first
    # that is not the input's (which few configurations have).
    layer = next(
        i for i, title in enumerate(titles) if i and "-input" not in title
    )
    driver.execute_script(
        _DEEP
        + f"const view = {_CATEGORIES}[arguments[0]];"
        + """
        const button = deepAll(view, n => n.tagName === 'BUTTON')[0];
        button.click();
        """,
        layer,
    )
    waited = wait_until(
        driver, _CHARTS_DRAWN, f"the charts of {titles[layer]}", False
    )
    driver.execute_script(
        _DEEP + f"{_CATEGORIES}[arguments[0]].scrollIntoView();", layer
    )
    time.sleep(SETTLE_S)
    path = os.path.join(out, "layer.png")
    save(driver, path)
    print(f"{path}: Custom Scalars, {titles[layer]} ({waited:.1f} s to draw)")


def hparams(driver, base, out):
    """The HParams table as it opens."""
    driver.get(f"{base}/#hparams")
    rows = "deepAll(document, n => n.tagName === 'VAADIN-GRID-CELL-CONTENT')"
    wait_until(driver, f"return {rows}.length > 20;", "the HParams table")
    path = os.path.join(out, "hparams.png")
    save(driver, path)
    print(f"{path}: HParams table")


def text(driver, base, out):
    """The Text dashboard as it opens: the text summary of each run, the
    first run's on top."""
    driver.get(f"{base}/#text")
    cards = "deepAll(document, n => n.tagName === 'TF-TEXT-LOADER')"
    wait_until(driver, f"return {cards}.length > 0;", "the text summaries")
    path = os.path.join(out, "text.png")
    save(driver, path)
    print(f"{path}: Text")


def photograph(args, base):
    driver, profile = open_chromium(args, 1600, 1100)
    try:
        custom_scalars(driver, base, args.out)
        driver.set_window_size(1700, 640)
        hparams(driver, base, args.out)
        driver.set_window_size(1600, 1100)
        text(driver, base, args.out)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def main(argv=None):
    args = parse_args(argv)
    if os.sep in args.python:  # a path: TensorBoard starts in another folder
        args.python = os.path.abspath(args.python)
    os.makedirs(args.out, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="bn-keras-screenshots-")
    log_path = os.path.join(scratch, "tensorboard.log")
    server = None
    try:
        session = args.session or train_demo(
            args.python, args.demo_args, scratch
        )
        with open(log_path, "wb") as log:
            server, base = start_tensorboard(args.python, session, log)
            photograph(args, base)
    except Exception:
        if os.path.exists(log_path):
            with open(log_path, errors="replace") as log:
                print("TensorBoard's log:\n" + "".join(log.readlines()[-20:]))
        raise
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
