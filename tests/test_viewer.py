"""The viewer: its logic on known masks, and the page itself, served by `glioseg serve` and driven in
Debian's headless Chromium (Selenium with chromedriver) as a person would use it."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from glioseg.app import logic
from glioseg.errors import DataError
from glioseg.formats import FORMATS
from glioseg.formats.base import Scan, ScanRef
from glioseg.formats.kaggle3m import read_mask
from glioseg.formats.synthetic.lgg import generate_lgg
from glioseg.inference.scans import predict
from glioseg.model.checkpoint import ModelSet
from tests.conftest import train_tiny_model

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's headless browser: /usr/bin/chromium and /usr/bin/chromedriver "
    "(apt-get install chromium chromium-driver; .ci/run installs them)",
)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return train_tiny_model(tmp_path_factory.mktemp("model") / "model.pt", epochs=1)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "kaggle_3m"
    generate_lgg(root, patients=2, slices=8, size=64, seed=0)
    return root


def square(shape: tuple[int, int], top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[top : top + side, left : left + side] = 1
    return mask


def known_result() -> logic.CaseResult:
    """Three slices: half-overlapping squares (Dice 0.5), both empty (Dice 1), no truth (no Dice)."""
    images = tuple(np.zeros((10, 10, 3), np.uint8) for _ in range(3))
    predictions = (square((10, 10), 2, 2, 4), np.zeros((10, 10), np.uint8), square((10, 10), 0, 0, 3))
    truths = (square((10, 10), 2, 4, 4), np.zeros((10, 10), np.uint8), None)
    names = ("C_1", "C_2", "C_3")
    scan = Scan(ScanRef("C", Path("C")), names, names, (Path("C"),) * 3, images, truths)
    return logic.CaseResult("C", names, images, predictions, truths, scan=scan, data_format=FORMATS["lgg"])


def test_areas_and_dice_on_known_masks():
    result = known_result()
    table = logic.slice_table(result)
    assert table["predicted_pixels"].tolist() == [16, 0, 9]
    assert table["truth_pixels"].tolist()[:2] == [16, 0] and table["dice"].tolist()[:2] == [0.5, 1.0]
    assert table["truth_pixels"].isna().tolist() == table["dice"].isna().tolist() == [False, False, True]
    assert logic.case_dice(result) == 0.5
    no_truth = logic.CaseResult("C", ("C_1",), result.images[:1], result.predictions[:1], (None,))
    assert logic.case_dice(no_truth) is None and not no_truth.has_truth


def test_summary_shows_slice_and_case_numbers():
    result = known_result()
    table = logic.slice_table(result)
    summary = logic.area_summary(result, table, 0)
    assert summary.to_dict("index") == {
        "slice 1": {"tumour area (px)": "16", "truth area (px)": "16", "Dice": "0.500"},
        "case": {"tumour area (px)": "25", "truth area (px)": "16", "Dice": "0.500"},
    }
    assert logic.area_summary(result, table, 2).loc["slice 3"].tolist() == ["9", "–", "–"]
    no_truth = logic.CaseResult("C", ("C_1",), result.images[:1], result.predictions[:1], (None,))
    assert logic.area_summary(no_truth, logic.slice_table(no_truth), 0).to_dict("index") == {
        "slice 1": {"tumour area (px)": "16"},
        "case": {"tumour area (px)": "16"},
    }


def test_overlay_blends_truth_prediction_and_overlap_at_the_opacity():
    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 1] = 100  # the FLAIR channel is what is shown
    prediction, truth = np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8)
    prediction[0, :2] = 1
    truth[:2, 1] = 1
    assert (logic.compose_overlay(image, prediction, truth, 0.0) == 100).all()
    full = logic.compose_overlay(image, prediction, truth, 1.0)
    assert full[0, 0].tolist() == [255, 0, 0] and full[0, 1].tolist() == [255, 255, 0]
    assert full[1, 1].tolist() == [0, 255, 0] and full[3, 3].tolist() == [100, 100, 100]
    assert logic.compose_overlay(image, prediction, truth, 0.25)[0, 0].tolist() == [139, 75, 75]
    assert logic.compose_overlay(image, prediction, None, 1.0)[1, 1].tolist() == [100, 100, 100]


def test_enlarge_keeps_pixels_crisp():
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    large = logic.enlarge(image, size=9)
    assert large.shape == (6, 8) and (large[::2, ::2] == image).all() and (large[1::2, 1::2] == image).all()


def test_zip_holds_kaggle_named_masks_at_input_size():
    result = known_result()
    data, file_name, mime = logic.prediction_download(result)
    assert (file_name, mime) == ("C_masks.zip", "application/zip")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == ["C/C_1_mask.tif", "C/C_2_mask.tif", "C/C_3_mask.tif"]
        for name, prediction in zip(archive.namelist(), result.predictions):
            mask = tifffile.imread(io.BytesIO(archive.read(name)))
            assert mask.dtype == np.uint8 and mask.shape == (10, 10)
            np.testing.assert_array_equal(mask, prediction * 255)


def test_uploads_become_one_case_folder(tmp_path):
    files = [("some/dir/P_2.tif", b"image"), ("P_2_mask.tif", b"mask"), ("notes.txt", b"other")]
    folder = logic.save_uploads(files, tmp_path)
    assert folder.name == "P" and sorted(p.name for p in folder.iterdir()) == ["P_2.tif", "P_2_mask.tif"]
    assert logic.save_uploads(list(reversed(files)), tmp_path) == folder
    assert logic.save_uploads([("scan.tif", b"image")], tmp_path).name == "upload"
    with pytest.raises(DataError, match="no TIF slices or NIfTI cases"):
        logic.save_uploads([("P_2_mask.tif", b"mask")], tmp_path)


def test_cases_are_listed_from_the_data_folder(cases, tmp_path):
    assert logic.list_cases(cases) == sorted(p.name for p in cases.iterdir())
    assert logic.list_cases(tmp_path / "missing") == []
    case = logic.load_case(cases / logic.list_cases(cases)[0])
    assert [path.stem for path in case.ref.files] == [f"{case.name}_{n}" for n in range(1, 9)]
    assert all(path.with_name(f"{path.stem}_mask.tif").is_file() for path in case.ref.files)


def test_viewer_masks_equal_what_predict_writes(model_file, cases, tmp_path):
    name = logic.list_cases(cases)[1]
    result = logic.case_result(logic.load(str(model_file)), logic.load_case(cases / name), "cpu")
    predict(cases / name, model_file, tmp_path / "out", device="cpu")
    with zipfile.ZipFile(io.BytesIO(logic.prediction_download(result)[0])) as archive:
        for slice_name, truth in zip(result.slices, result.truths):
            written = tifffile.imread(tmp_path / "out" / name / f"{slice_name}_mask.tif")
            zipped = tifffile.imread(io.BytesIO(archive.read(f"{name}/{slice_name}_mask.tif")))
            np.testing.assert_array_equal(zipped, written)
            np.testing.assert_array_equal(truth, read_mask(cases / name / f"{slice_name}_mask.tif"))


def test_the_viewer_predicts_with_a_model_set_as_predict_does(model_file, cases, tmp_path):
    second = train_tiny_model(tmp_path / "second.pt", epochs=2)
    spec = f"{model_file}, {second}"
    assert len(logic.model_version(spec).split(",")) == 2
    loaded = logic.load(spec)
    assert isinstance(loaded, ModelSet) and loaded.names == (str(model_file), str(second))
    name = logic.list_cases(cases)[0]
    result = logic.case_result(loaded, logic.load_case(cases / name), "cpu")
    predict(cases / name, [str(model_file), str(second)], tmp_path / "out", device="cpu")
    for slice_name, prediction in zip(result.slices, result.predictions):
        written = tifffile.imread(tmp_path / "out" / name / f"{slice_name}_mask.tif")
        np.testing.assert_array_equal(prediction * 255, written)


def test_page_messages_leave_out_the_servers_own_folders():
    uploads, temp = Path("/tmp/glioseg-uploads-x1"), Path("/tmp")
    message = "/tmp/glioseg-uploads-x1/TCGA_A/TCGA_A_1.tif: not an RGB image; /tmp/glioseg-viewer-2/c_pred.nii.gz"
    assert logic.page_message(message, [uploads, temp]) == (
        "TCGA_A/TCGA_A_1.tif: not an RGB image; glioseg-viewer-2/c_pred.nii.gz"
    )
    assert logic.page_message("/data/cases/x.tif: unreadable", [uploads, temp]) == "/data/cases/x.tif: unreadable"


def test_bad_model_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError, match="model file not found"):
        logic.load(str(tmp_path / "missing.pt"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(process: subprocess.Popen, url: str, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while True:
        assert process.poll() is None, f"glioseg serve exited:\n{log.read_text()[-3000:]}"
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return
        except OSError:
            pass
        assert time.time() < deadline, f"glioseg serve did not come up:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


@contextlib.contextmanager
def serving(model: Path, data: Path, workdir: Path):
    """`glioseg serve` on a free loopback port, in its own process group (stopped by its pid); yields its URL."""
    port, log = free_port(), workdir / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "glioseg.cli",
                "serve",
                "--model",
                str(model),
                "--data",
                str(data),
                "--port",
                str(port),
                "--device",
                "cpu",
            ],
            cwd=workdir,
            env={**os.environ, "TMPDIR": str(workdir)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(process, url, log)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(model_file, cases, tmp_path_factory):
    with serving(model_file, cases, tmp_path_factory.mktemp("serve")) as url:
        yield url


def websocket_handshake(port: int, host: str) -> str:
    """The status line the viewer answers to a WebSocket handshake with ``host`` as Host and Origin."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(
            (
                f"GET /_stcore/stream HTTP/1.1\r\nHost: {host}:{port}\r\nOrigin: http://{host}:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            ).encode()
        )
        return connection.recv(200).split(b"\r\n")[0].decode()


@pytest.mark.slow
def test_a_foreign_host_cannot_open_the_viewers_session(server):
    port = int(server.rsplit(":", 1)[1])
    assert websocket_handshake(port, "rebound.example") == "HTTP/1.1 403 Forbidden"
    assert websocket_handshake(port, "127.0.0.1") == "HTTP/1.1 101 Switching Protocols"
    assert websocket_handshake(port, "localhost") == "HTTP/1.1 101 Switching Protocols"


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium through chromedriver; downloads land in ``tmp_path/downloads``."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    options.add_experimental_option("prefs", {"download.default_directory": str(tmp_path / "downloads")})
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The viewer page as a person sees it: what its widgets show and how to use them."""

    def __init__(self, driver, timeout: float = 60):
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.wait = WebDriverWait(driver, timeout, ignored_exceptions=[StaleElementReferenceException])

    def find(self, selector: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def summary(self) -> dict[str, dict[str, str]]:
        """The numbers table beside the image: row label -> column -> text, e.g. {'case': {'Dice': '0.500'}}."""
        tables = self.find('[data-testid="stTable"] table')
        if not tables:
            return {}
        columns = [cell.text for cell in tables[0].find_elements("css selector", "thead th")][1:]
        rows = [
            [cell.text for cell in row.find_elements("css selector", "th, td")]
            for row in tables[0].find_elements("css selector", "tbody tr")
        ]
        return {row[0]: dict(zip(columns, row[1:])) for row in rows}

    def picture(self) -> tuple[str, bytes] | None:
        """The overlay image's source and its pixels on screen; None until the browser has loaded it."""
        images = self.find('[data-testid="stImage"] img')
        loaded = "return arguments[0].complete && arguments[0].naturalWidth > 0"
        if not images or not self.driver.execute_script(loaded, images[0]):
            return None
        return images[0].get_attribute("src"), images[0].screenshot_as_png

    def pick_case(self, name: str) -> None:
        self.find('[data-testid="stSelectbox"] input')[0].click()
        self.wait.until(lambda _: [o for o in self.find('[role="option"]') if o.text == name])
        next(o for o in self.find('[role="option"]') if o.text == name).click()
        captions = '[data-testid="stCaptionContainer"]'
        self.wait.until(lambda _: any(f"case {name} ·" in c.text for c in self.find(captions)))

    def upload(self, files: list[Path]) -> None:
        next(label for label in self.find('[data-testid="stRadio"] label') if label.text == "upload").click()
        self.wait.until(lambda _: self.find('[data-testid="stFileUploader"] input[type="file"]'))
        self.find('[data-testid="stFileUploader"] input[type="file"]')[0].send_keys("\n".join(map(str, files)))

    def press_on_slider(self, label: str, key: str) -> None:
        """Click the slider's thumb, then press a key, as a keyboard user would."""
        from selenium.webdriver.common.action_chains import ActionChains

        thumb = self.find(f'input[type="range"][aria-label="{label}"]')[0].find_element("xpath", "../..")
        ActionChains(self.driver).click(thumb).send_keys(key).perform()


@pytest.mark.slow
@needs_chromium
def test_page_shows_a_case_and_follows_the_slice_slider(model_file, cases, server, browser, tmp_path):
    from selenium.webdriver.common.keys import Keys

    name = logic.list_cases(cases)[1]  # not the preselected first case: the test picks it
    result = logic.case_result(logic.load(str(model_file)), logic.load_case(cases / name), "cpu")
    table = logic.slice_table(result)
    start = len(result.slices) // 2  # the page opens a case on its middle slice
    before, after = (logic.area_summary(result, table, i).to_dict("index") for i in (start, start + 1))
    assert list(before[f"slice {start + 1}"].values()) != list(after[f"slice {start + 2}"].values()), (
        "the synthetic case should have different areas on these slices"
    )

    page = Page(browser)
    browser.get(server)
    page.wait.until(lambda _: page.find('[data-testid="stSelectbox"] input'))
    page.pick_case(name)
    page.wait.until(lambda _: page.summary() == before, f"the page did not show {name}'s middle slice")
    source, pixels = page.wait.until(lambda _: page.picture())

    page.press_on_slider("Slice", Keys.ARROW_RIGHT)
    page.wait.until(lambda _: page.summary() == after, "the areas did not follow the slider")
    page.wait.until(
        lambda _: (picture := page.picture()) and picture[0] != source and picture[1] != pixels,
        "the overlay image did not change with the slice",
    )
    assert "Download predicted masks" in page.find('[data-testid="stDownloadButton"]')[0].text
    assert browser.save_screenshot(str(tmp_path / "viewer.png"))


@pytest.mark.slow
@needs_chromium
def test_page_shows_a_bad_model_as_one_line(server, browser):
    from selenium.webdriver.common.keys import Keys

    page = Page(browser)
    browser.get(server)
    page.wait.until(lambda _: page.find('input[aria-label="Model"]'))
    field = page.find('input[aria-label="Model"]')[0]
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys("/no/such/model.pt", Keys.ENTER)
    page.wait.until(lambda _: page.find('[data-testid="stAlertContentError"]'))
    assert page.find('[data-testid="stAlertContentError"]')[0].text == "error: /no/such/model.pt: model file not found"
    assert not page.find('[data-testid="stException"]')


@pytest.mark.slow
@needs_chromium
def test_page_predicts_uploaded_slices_and_downloads_their_masks(model_file, cases, server, browser, tmp_path):
    name = logic.list_cases(cases)[0]
    files = [cases / name / f"{name}_{n}{suffix}.tif" for n in (1, 2, 3) for suffix in ("", "_mask")]
    page = Page(browser)
    browser.get(server)
    page.wait.until(lambda _: page.find('[data-testid="stRadio"] label'))
    page.upload(files)
    captions = '[data-testid="stCaptionContainer"]'
    page.wait.until(lambda _: any(f"case {name} · 3 slices" in c.text for c in page.find(captions)))
    page.wait.until(lambda _: "Dice" in page.summary().get("case", {}))

    page.wait.until(lambda _: page.find('[data-testid="stDownloadButton"] button'))
    page.find('[data-testid="stDownloadButton"] button')[0].click()
    download = tmp_path / "downloads" / f"{name}_masks.zip"
    page.wait.until(lambda _: download.is_file())
    with zipfile.ZipFile(download) as archive:
        assert archive.namelist() == [f"{name}/{name}_{n}_mask.tif" for n in (1, 2, 3)]


# --------------------------------------------------------------------------- BraTS (NIfTI) cases

BRATS_PARAMS = {
    "seed": 3,
    "dataset": "brats",
    "augment": {"image_size": 32},
    "model": {"encoder": "resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 8]},
    "run": {"device": "cpu", "threads": 1},
    # flip TTA and largest-component post-processing on, so the viewer = predict tests cover both
    "inference": {"tta": True, "postprocess": "largest_component"},
}
BRATS_REGIONS = {"whole_tumour": (1, 2, 3), "tumour_core": (1, 3), "enhancing_tumour": (3,)}


@pytest.fixture(scope="module")
def brats_cases(tmp_path_factory):
    """Two NIfTI phantom cases (8 axial slices of 32 x 32) with their seg files, and a third without."""
    from glioseg.config.schema import parse_params
    from glioseg.formats.synthetic.brats import generate_brats

    root = tmp_path_factory.mktemp("brats") / "brats"
    suffixes = parse_params(BRATS_PARAMS).data.brats.suffixes
    names = generate_brats(root, cases=3, slices=8, size=32, seed=4, suffixes=suffixes)
    for path in (root / names[2]).glob(f"*_{suffixes['seg']}.nii.gz"):
        path.unlink()
    return root


@pytest.fixture(scope="module")
def brats_model(brats_cases, tmp_path_factory):
    """An untrained BraTS U-Net saved as a glioseg checkpoint (TTA and post-processing on): predict and the
    viewer must agree on it all the same."""
    import torch

    from glioseg.config.schema import parse_params
    from glioseg.data.transforms import build_pipelines, pipelines_to_dict
    from glioseg.formats import brats
    from glioseg.model.checkpoint import model_payload, save_checkpoint
    from glioseg.model.network import build_model

    params = parse_params(BRATS_PARAMS)
    images = brats.read_case(brats_cases / logic.list_cases(brats_cases)[0], params.data.brats).images
    torch.manual_seed(params.seed)
    payload = model_payload(
        build_model(params.model),
        params.model,
        pipelines_to_dict(build_pipelines(params.augment, images)),
        params.inference,
        params.data_card(),
    )
    path = tmp_path_factory.mktemp("brats-model") / "model.pt"
    save_checkpoint(path, payload)
    return path


def known_brats_result(with_truth: bool = True) -> logic.CaseResult:
    """One 4 x 4 slice with classes 1-3 (BraTS: necrotic core, oedema, enhancing)."""
    truth = np.array([[0, 2, 2, 0], [2, 1, 3, 0], [0, 3, 3, 0], [0, 0, 0, 0]], np.uint8)
    prediction = np.array([[0, 2, 0, 0], [2, 3, 3, 0], [0, 3, 1, 0], [0, 0, 0, 2]], np.uint8)
    return logic.CaseResult(
        "B",
        ("B_000",),
        (np.zeros((4, 4, 2), np.uint8),),
        (prediction,),
        (truth if with_truth else None,),
        dict(BRATS_REGIONS),
        4,
        ("background", "necrotic_core", "oedema", "enhancing"),
    )


def test_brats_areas_and_dice_are_given_per_region_on_known_labels():
    result = known_brats_result()
    table = logic.slice_table(result)
    row = table.iloc[0]
    # whole tumour: truth 7 px, prediction 7, overlap 6 -> 12/14; core: truth {1,3} 4 px, prediction 4, overlap 4;
    # enhancing: truth 3 px, prediction 3, overlap 2 (the truth's 1 at (1,1) is predicted 3, its 3 at (2,2) is 1).
    assert (row.whole_tumour_predicted_pixels, row.whole_tumour_truth_pixels) == (7, 7)
    assert row.whole_tumour_dice == pytest.approx(12 / 14)
    assert (row.tumour_core_predicted_pixels, row.tumour_core_truth_pixels, row.tumour_core_dice) == (4, 4, 1.0)
    assert row.enhancing_tumour_dice == pytest.approx(4 / 6)
    summary = logic.area_summary(result, table, 0)
    assert list(summary.index) == [
        "slice 1 · whole tumour",
        "case · whole tumour",
        "slice 1 · tumour core",
        "case · tumour core",
        "slice 1 · enhancing tumour",
        "case · enhancing tumour",
    ]
    assert summary.loc["case · enhancing tumour"].tolist() == ["3", "3", "0.667"]
    assert logic.legend(result, 0) == (
        "left: truth, right: prediction · red: necrotic core · green: oedema · yellow: enhancing"
    )


def test_brats_overlay_shows_truth_and_prediction_side_by_side_in_class_colours():
    from glioseg.figures import CLASS_COLOURS

    result = known_brats_result()
    picture = logic.compose_overlay(result.images[0], result.predictions[0], result.truths[0], 1.0, classes=4)
    assert picture.shape == (4, 8, 3)
    assert picture[1, 2].tolist() == CLASS_COLOURS[3].tolist()  # truth panel: enhancing at (1, 2)
    assert picture[2, 4 + 2].tolist() == CLASS_COLOURS[1].tolist()  # prediction panel: necrotic core at (2, 2)
    assert picture[3, 3].tolist() == [0, 0, 0]  # background stays the (black) scan
    alone = known_brats_result(with_truth=False)
    assert logic.compose_overlay(alone.images[0], alone.predictions[0], None, 0.5, classes=4).shape == (4, 4, 3)
    assert logic.legend(alone, 0).startswith("prediction · red: necrotic core")


def test_brats_cases_are_listed_and_read_as_nifti_folders(brats_cases):
    names = logic.list_cases(brats_cases)
    assert names == sorted(p.name for p in brats_cases.iterdir()) and len(names) == 3
    case = logic.load_case(brats_cases / names[0])
    assert case.folder == brats_cases / names[0] and case.data_format is FORMATS["brats"] and case.ref.files == ()
    assert len(case.files()) == 5  # t1, t1ce, t2, flair, seg
    assert logic.case_fingerprint(case) != logic.case_fingerprint(logic.load_case(brats_cases / names[1]))


def test_viewer_label_volume_equals_what_predict_writes_for_a_brats_case(brats_model, brats_cases, tmp_path):
    import nibabel as nib

    name = logic.list_cases(brats_cases)[0]
    result = logic.case_result(logic.load(str(brats_model)), logic.load_case(brats_cases / name), "cpu")
    assert len(result.slices) == 8 and result.has_truth and result.classes == 4
    assert set(result.regions) == set(BRATS_REGIONS)
    assert result.predictions[0].shape == result.truths[0].shape == (32, 32)
    predict(brats_cases / name, brats_model, tmp_path / "out", device="cpu")
    written = nib.load(tmp_path / "out" / name / f"{name}_pred.nii.gz")
    data, file_name, mime = logic.prediction_download(result)
    assert (file_name, mime) == (f"{name}_pred.nii.gz", "application/gzip")
    downloaded = nib.Nifti1Image.from_bytes(gzip.decompress(data))
    np.testing.assert_array_equal(np.asarray(downloaded.dataobj), np.asarray(written.dataobj))
    np.testing.assert_allclose(downloaded.affine, written.affine)
    table = logic.slice_table(result)
    assert table["whole_tumour_truth_pixels"].sum() > 0  # the phantom has a tumour
    # ... and what evaluate scores for the same case (input size = model size here), TTA and post-processing on
    from scipy import ndimage

    from glioseg.data.cache import SliceArrays
    from glioseg.evaluation.evaluate import predict_masks

    loaded = logic.load(str(brats_model))
    assert (loaded.inference.tta, loaded.inference.postprocess) == (True, "largest_component")
    images = np.stack(result.images)
    zeros = np.zeros(images.shape[:3], np.uint8)
    arrays = SliceArrays(
        images,
        zeros,
        zeros.astype(np.float16),
        np.array([name] * len(images)),
        np.arange(len(images)),
        np.array(["test"] * len(images)),
    )
    np.testing.assert_array_equal(predict_masks(loaded, arrays, "cpu"), np.stack(result.predictions))
    assert ndimage.label(np.stack(result.predictions) > 0)[1] <= 1  # one connected tumour kept per case


def test_brats_case_without_its_seg_file_is_shown_without_truth(brats_model, brats_cases):
    name = logic.list_cases(brats_cases)[2]
    result = logic.case_result(logic.load(str(brats_model)), logic.load_case(brats_cases / name), "cpu")
    assert not result.has_truth and len(result.slices) == 8
    summary = logic.area_summary(result, logic.slice_table(result), 0)
    assert list(summary.columns) == ["tumour area (px)"]


def test_without_data_the_viewer_opens_the_raw_folder_of_the_models_dataset(model_file, brats_model):
    from glioseg import paths
    from glioseg.app import streamlit_command

    assert logic.default_data_folder(logic.load(str(model_file))) == paths.raw_cases("kaggle_3m")
    assert logic.default_data_folder(logic.load(str(brats_model))) == paths.raw_cases("brats")
    command = streamlit_command("m.pt", None, 8501, "cpu")
    assert command[command.index("--") + 1 :] == ["--model", "m.pt", "--device", "cpu"]
    command = streamlit_command("m.pt", Path("cases"), 8501, "cpu")
    assert command[command.index("--") + 1 :] == ["--model", "m.pt", "--data", "cases", "--device", "cpu"]


def test_uploaded_brats_volumes_become_a_case_predicted_as_the_data_folders(brats_model, brats_cases, tmp_path):
    name = logic.list_cases(brats_cases)[0]
    files = [(f"upload/{p.name}", p.read_bytes()) for p in sorted((brats_cases / name).iterdir())]
    folder = logic.save_uploads([*files, ("notes.txt", b"other")], tmp_path)
    assert folder.name == name and sorted(p.name for p in folder.iterdir()) == [n.split("/")[1] for n, _ in files]
    assert logic.save_uploads(list(reversed(files)), tmp_path) == folder
    loaded = logic.load(str(brats_model))
    uploaded = logic.case_result(loaded, logic.load_case(folder), "cpu")
    original = logic.case_result(loaded, logic.load_case(brats_cases / name), "cpu")
    assert uploaded.has_truth and len(uploaded.slices) == 8
    for got, expected in zip(uploaded.predictions + uploaded.truths, original.predictions + original.truths):
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(DataError, match=r"TIF slices \(P_1.tif\) and NIfTI cases \(.*\) together"):
        logic.save_uploads([*files, ("P_1.tif", b"image")], tmp_path)
    with pytest.raises(DataError, match=r"for one case \(cases: A, B\)"):
        logic.save_uploads([("A_flair.nii.gz", b"x"), ("B_flair.nii.gz", b"y")], tmp_path)


def test_a_model_of_the_other_dataset_is_a_one_line_error(model_file, brats_model, brats_cases, cases):
    brats_case = logic.load_case(brats_cases / logic.list_cases(brats_cases)[0])
    with pytest.raises(DataError, match="trained on LGG and reads TIF slices, not NIfTI cases"):
        logic.case_result(logic.load(str(model_file)), brats_case, "cpu")
    lgg_case = logic.load_case(cases / logic.list_cases(cases)[0])
    with pytest.raises(DataError, match="trained on BraTS and reads NIfTI cases"):
        logic.case_result(logic.load(str(brats_model)), lgg_case, "cpu")


@pytest.mark.slow
@needs_chromium
def test_page_shows_a_brats_case_per_region_and_downloads_its_label_volume(
    brats_model, brats_cases, browser, tmp_path, tmp_path_factory
):
    name = logic.list_cases(brats_cases)[1]
    result = logic.case_result(logic.load(str(brats_model)), logic.load_case(brats_cases / name), "cpu")
    middle = len(result.slices) // 2
    expected = logic.area_summary(result, logic.slice_table(result), middle).to_dict("index")
    with serving(brats_model, brats_cases, tmp_path_factory.mktemp("serve-brats")) as url:
        page = Page(browser)
        browser.get(url)
        page.wait.until(lambda _: page.find('[data-testid="stSelectbox"] input'))
        page.pick_case(name)
        page.wait.until(lambda _: page.summary() == expected, f"the page did not show {name}'s regions")
        page.wait.until(lambda _: page.picture())
        caption = page.find('[data-testid="stImage"]')[0].text
        assert "left: truth, right: prediction" in caption and "yellow: enhancing" in caption
        button = page.find('[data-testid="stDownloadButton"] button')[0]
        assert button.text == f"Download predicted label volume ({name}_pred.nii.gz)"
        button.click()
        download = tmp_path / "downloads" / f"{name}_pred.nii.gz"
        page.wait.until(lambda _: download.is_file() and download.stat().st_size > 0)
        assert download.read_bytes() == logic.prediction_download(result)[0]
        assert browser.save_screenshot(str(tmp_path / "viewer-brats.png"))

        uploaded = logic.list_cases(brats_cases)[2]  # the case without a seg file
        page.upload(sorted((brats_cases / uploaded).iterdir()))
        page.wait.until(
            lambda _: any(
                f"case {uploaded} · 8 slices" in c.text for c in page.find('[data-testid="stCaptionContainer"]')
            )
        )
        page.wait.until(
            lambda _: (
                list(page.summary())
                == [
                    f"slice {middle + 1} · whole tumour",
                    "case · whole tumour",
                    f"slice {middle + 1} · tumour core",
                    "case · tumour core",
                    f"slice {middle + 1} · enhancing tumour",
                    "case · enhancing tumour",
                ]
            )
        )
        assert list(page.summary()["case · whole tumour"]) == ["tumour area (px)"]  # no seg file: no truth
