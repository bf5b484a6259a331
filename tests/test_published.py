"""Published figures as data: the shipped files load, and a bad field names its file and line."""

import pytest

from fixtures import REPO
from teddy.errors import TeddyError
from teddy.published import COLUMNS, load_published

HEADER = ",".join(COLUMNS)


def test_shipped_published_files_load_with_one_schema():
    table = load_published(REPO / "config" / "published")
    assert list(table.columns) == COLUMNS and len(table) > 40
    assert set(table["labels"]) == {"soft", "hard"}
    fm = load_published(REPO / "config" / "published", dataset="fashion_mnist")
    dsa = fm[(fm["method"] == "dsa")].set_index("ipc")["top1"]
    assert dsa[10] == 84.6 and dsa[50] == 88.7  # the DSA figures as published
    assert (fm["labels"] == "hard").all() and (fm["norm"] == "instance").all()
    whole = load_published(REPO / "config" / "published", dataset="cifar10")
    assert whole.loc[whole["method"] == "whole dataset", "ipc"].isna().all()


def test_every_csv_of_the_folder_is_read(tmp_path):
    (tmp_path / "a.csv").write_text(f"# comment\n{HEADER}\nfashion_mnist,x,1,convnet,soft,batch,50,1.2,me\n")
    (tmp_path / "b.csv").write_text(f"{HEADER}\nfashion_mnist,y,10,convnet,hard,,80,,you\n")
    table = load_published(tmp_path)
    assert list(table["method"]) == ["x", "y"] and table["std"].isna().tolist() == [False, True]
    assert table["norm"].isna().tolist() == [False, True]  # empty norm: not stated by the source
    assert list(load_published(tmp_path / "b.csv")["method"]) == ["y"]  # or one named file


@pytest.mark.parametrize("row, field", [
    ("fashion_mnist,x,1,convnet,soft,batch,high,,me", "top1"),
    ("fashion_mnist,x,1,convnet,soft,batch,101,,me", "top1"),
    ("fashion_mnist,x,0,convnet,soft,batch,50,,me", "ipc"),
    ("fashion_mnist,x,1,convnet,kd,batch,50,,me", "labels"),
    ("fashion_mnist,x,1,convnet,soft,weird,50,,me", "norm"),
    ("fashion_mnist,x,1,convnet,soft,batch,50,-1,me", "std"),
    ("fashion_mnist,x,1,convnet,soft,batch,50,,", "source"),
])
def test_a_bad_field_names_the_file_and_line(tmp_path, row, field):
    path = tmp_path / "p.csv"
    path.write_text(f"# a comment line\n{HEADER}\nfashion_mnist,ok,1,convnet,soft,batch,50,,me\n{row}\n")
    with pytest.raises(TeddyError, match=rf"p\.csv line 4: field '{field}'"):
        load_published(tmp_path)


def test_a_wrong_header_or_field_count_is_named(tmp_path):
    (tmp_path / "p.csv").write_text("dataset,method,top1\nfashion_mnist,x,50\n")
    with pytest.raises(TeddyError, match=r"p\.csv line 1: header"):
        load_published(tmp_path)
    (tmp_path / "p.csv").write_text(f"{HEADER}\nfashion_mnist,x,1,convnet,soft,batch,50\n")
    with pytest.raises(TeddyError, match=r"p\.csv line 2: 7 fields"):
        load_published(tmp_path)
    with pytest.raises(TeddyError, match="published results not found"):
        load_published(tmp_path / "nowhere")
