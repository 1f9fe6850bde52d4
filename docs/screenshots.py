"""Screenshots of the TensorBoard dashboards of a `bn-keras compare` run.

    make screenshots                  # a fresh demo run, then the PNGs
    python docs/screenshots.py --session runs/compare-digits-...  # reuse

Trains the comparison of `make demo` (unless `--session` names one), serves
it with TensorBoard on 127.0.0.1 (a free port), drives Debian's headless
Chromium through selenium and saves, in `docs/images`:

- `overview.png`: Custom Scalars, its Overview category (validation curves
  and the model-wide BN figures, across the configurations);
- `layer.png`: the category of the first BN layer;
- `hparams.png`: the HParams table, the objective first.

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
DEMO = [
    "-m", "bn_keras", "compare", "--dataset", "digits", "--model", "cnn",
    "--epochs", "12", "--normalizations", "batch", "renorm",
]
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
# The runs on the Custom Scalars pictures: each configuration's monitor run,
# which holds the Overview's epoch metrics and the BN figures (Keras's own
# `train` and `validation` runs left out of the sidebar, which is the legend).
RUNS_SHOWN = "batchnorm$"

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
    return parser.parse_args(argv)


def train_demo(python, logdir):
    """Runs the demo's comparison into `logdir`; returns its folder."""
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run(
        [python, *DEMO, "--logdir", logdir], check=True, cwd=REPO, env=env
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


def wait_until(driver, script, what):
    """Waits until the JavaScript `script` (with `deepAll`) is true."""
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    while not driver.execute_script(_DEEP + script):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the page did not show {what}")
        time.sleep(1)
    # The data is in; the charts still lay themselves out (a chart
    # photographed too early is drawn at a fraction of its size).
    time.sleep(SETTLE_S)


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


def custom_scalars(driver, base, out, runs_regex):
    """The Overview, then the first layer's category, one at a time, with
    the runs whose names match `runs_regex`."""
    driver.get(f"{base}/#custom_scalars")
    wait_until(driver, f"return {_CATEGORIES}.length > 1;", "the categories")
    driver.execute_script(
        _DEEP
        + """
        const selector = deepAll(document,
          n => n.tagName === 'TF-RUNS-SELECTOR')[0];
        selector.regexInput = arguments[0];
        """,
        runs_regex,
    )
    titles = driver.execute_script(
        _DEEP + f"return {_CATEGORIES}.map(n => n.category.name);"
    )
    for index, name in ((0, "overview"), (1, "layer")):
        driver.execute_script(
            _DEEP
            + f"const views = {_CATEGORIES};"
            + """
            views.forEach((view, i) => { view.opened = i === arguments[0]; });
            views[arguments[0]].scrollIntoView();
            """,
            index,
        )
        wait_until(driver, _CHARTS_DRAWN, f"the charts of {titles[index]}")
        path = os.path.join(out, f"{name}.png")
        save(driver, path)
        print(f"{path}: Custom Scalars, {titles[index]}")


def hparams(driver, base, out):
    """The HParams table, its columns narrowed so that the five metrics it
    shows fit, the Trial ID widened to show the run names (what a person
    does by dragging the column borders)."""
    driver.get(f"{base}/#hparams")
    columns = "deepAll(document, n => n.tagName === 'VAADIN-GRID-COLUMN')"
    rows = "deepAll(document, n => n.tagName === 'VAADIN-GRID-CELL-CONTENT')"
    wait_until(
        driver, f"return {columns}.length > 2 && {rows}.length > 20;",
        "the HParams table",
    )
    driver.execute_script(
        _DEEP
        + f"const columns = {columns};"
        + """
        columns.forEach((column, i) => {
          if (i === 0) column.width = '12em';
          if (i > 1) { column.width = '8em'; column.flexGrow = 1; }
        });
        """
    )
    time.sleep(2)
    path = os.path.join(out, "hparams.png")
    save(driver, path)
    print(f"{path}: HParams table")


def photograph(args, base):
    driver, profile = open_chromium(args, 1600, 1100)
    try:
        custom_scalars(driver, base, args.out, RUNS_SHOWN)
        driver.set_window_size(1700, 640)
        hparams(driver, base, args.out)
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
        session = args.session or train_demo(args.python, scratch)
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
