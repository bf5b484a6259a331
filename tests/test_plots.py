"""Accuracy-vs-IPC plots: a valid PNG per evaluation protocol; a protocol that was not run is named."""

import pytest
from PIL import Image

from teddy.errors import TeddyError
from teddy.plots import accuracy_vs_ipc
from test_report import build


def test_plot_is_a_valid_png_with_one_panel_per_student(tmp_path):
    table = build(tmp_path)
    out = tmp_path / "plots" / "accuracy_vs_ipc_dc.png"
    accuracy_vs_ipc(table, "dc", out, dataset="fashion_mnist")
    with Image.open(out) as image:
        image.verify()
    with Image.open(out) as image:
        assert image.format == "PNG"
        one_panel_width = image.size[0]
    two = table.copy()
    two.loc[two.index[::2], "student"] = "resnet10_w16"  # a second student: a second panel, twice as wide
    accuracy_vs_ipc(two, "dc", tmp_path / "two.png")
    with Image.open(tmp_path / "two.png") as image:
        assert image.size[0] == pytest.approx(2 * one_panel_width, rel=0.05)
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_protocol_that_was_not_run_is_named(tmp_path):
    table = build(tmp_path)
    with pytest.raises(TeddyError, match=r"protocol 'dsa'.*\['dc', 'teddy_small_kd'\]"):
        accuracy_vs_ipc(table, "dsa", tmp_path / "x.png")  # published under dsa, but not run
    assert not (tmp_path / "x.png").exists()
