"""The glioseg viewer page (a Streamlit script; ``glioseg serve`` runs it).

Streamlit reruns this script top to bottom on every interaction; the model and each case's
prediction are cached, so moving a slider only recomposes one overlay.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from glioseg.app import logic
from glioseg.errors import GliosegError
from glioseg.model.checkpoint import LoadedModel, ModelSet
from glioseg.paths import MODEL


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="glioseg serve")
    parser.add_argument("--model", default=MODEL.as_posix())
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--device", default="auto")
    return parser.parse_args([arg for arg in sys.argv[1:] if arg != "--"])


@st.cache_resource(show_spinner="Loading the model…")
def cached_model(spec: str, version: str) -> LoadedModel | ModelSet:
    return logic.load(spec)


@st.cache_data(show_spinner="Predicting the case…", max_entries=8)
def cached_prediction(_loaded, _case, spec: str, version: str, device: str, folder: str, fingerprint: str):
    """Keyed by the model and the case's files; the model and case objects (underscored) are not hashed.

    The per-region counts are computed here, so they are cached with the prediction rather than
    recomputed on every slider move.
    """
    result = logic.case_result(_loaded, _case, device)
    _ = result.counts  # an assignment: a bare expression would be written to the page (Streamlit magic)
    return result


@st.cache_data(max_entries=8)
def cached_download(_result, spec: str, version: str, device: str, folder: str, fingerprint: str):
    return logic.prediction_download(_result)


@st.cache_resource
def upload_root() -> Path:
    """One temporary folder per server for uploaded cases, removed when the server stops."""
    root = Path(tempfile.mkdtemp(prefix="glioseg-uploads-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def stop_with(error: GliosegError) -> None:
    st.error(f"error: {logic.page_message(str(error), [upload_root(), Path(tempfile.gettempdir())])}")
    st.stop()


def choose_case(data: Path) -> Path | None:
    """The folder of the case picked in the sidebar: one under ``data``, or the uploaded slices."""
    cases = logic.list_cases(data)
    source = st.sidebar.radio("Case from", ["data folder", "upload"], index=0 if cases else 1, horizontal=True)
    if source == "data folder":
        if not cases:
            st.sidebar.info(f"No cases under {data}; upload slices instead.")
            return None
        return data / st.sidebar.selectbox("Case", cases)
    prompt, types = logic.upload_request()
    uploads = st.sidebar.file_uploader(prompt, type=types, accept_multiple_files=True)
    if not uploads:
        return None
    return logic.save_uploads([(f.name, f.getvalue()) for f in uploads], upload_root())


def choose_slice(result: logic.CaseResult) -> int:
    count = len(result.slices)
    if count == 1:
        return 0
    return st.slider("Slice", 1, count, value=count // 2 + 1, key=f"slice:{result.name}:{count}") - 1


def show_overlay(result: logic.CaseResult, index: int, opacity: float) -> None:
    image = logic.compose_overlay(
        result.images[index], result.predictions[index], result.truths[index], opacity, result.classes
    )
    st.image(
        logic.enlarge(image), caption=f"{result.slices[index]} — {logic.legend(result, index)}", output_format="PNG"
    )


def show_numbers(result: logic.CaseResult, table: pd.DataFrame, index: int) -> None:
    st.table(logic.area_summary(result, table, index))
    tumour_slices = sum(bool(prediction.any()) for prediction in result.predictions)
    dice_note = "; case Dice is pooled over its slices" if result.has_truth else ""
    st.caption(f"{tumour_slices} of {len(table)} slices with predicted tumour{dice_note}.")


def main() -> None:
    args = parse_args()
    st.set_page_config(page_title="glioseg viewer", layout="wide")
    st.title("glioseg viewer")
    spec = st.sidebar.text_input(
        "Model",
        value=args.model,
        help="model file, runs:/<run id>, models:/<name>/<version>; several, "
        "comma-separated, or folds:<k|site> average their probabilities",
    )
    try:
        version = logic.model_version(spec)
        loaded = cached_model(spec, version)
        folder = choose_case(args.data or logic.default_data_folder(loaded))
        if folder is None:
            st.info("Choose a case in the sidebar.")
            return
        case = logic.load_case(folder)
        key = (spec, version, args.device, str(folder), logic.case_fingerprint(case))
        result = cached_prediction(loaded, case, *key)
    except GliosegError as error:
        stop_with(error)
    st.caption(f"case {result.name} · {len(result.slices)} slices · model {spec}")
    slice_column, opacity_column = st.columns([3, 1])
    with slice_column:
        index = choose_slice(result)
    with opacity_column:
        opacity = st.slider("Overlay opacity", 0.0, 1.0, 0.4, 0.05)
    table = logic.slice_table(result)
    image_column, numbers_column = st.columns([1, 1])
    with image_column:
        show_overlay(result, index, opacity)
    with numbers_column:
        show_numbers(result, table, index)
        data, file_name, mime = cached_download(result, *key)
        kind = logic.download_name(file_name)
        st.download_button(f"Download predicted {kind}", data, file_name=file_name, mime=mime)
    with st.expander("Per-slice areas and Dice"):
        st.dataframe(table, hide_index=True)


main()
