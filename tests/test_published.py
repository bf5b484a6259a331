"""Published figures as data: the shipped files load with the known protocol names, and a bad
field (an unknown protocol included) names its file and line."""

import pytest

from fixtures import REPO
from teddy.errors import TeddyError
from teddy.protocols import known_protocols as protocol_files
from teddy.protocols import named_protocols
from teddy.published import COLUMNS, load_published, row_protocols

HEADER = ",".join(COLUMNS)
PUBLISHED = REPO / "config" / "published"


def test_shipped_published_files_load_with_one_schema():
    table = load_published(PUBLISHED)
    assert list(table.columns) == COLUMNS and len(table) > 40
    assert COLUMNS.index("protocol") == COLUMNS.index("labels") + 1
    assert set(table["labels"]) == {"soft", "hard"}
    fm = load_published(PUBLISHED, dataset="fashion_mnist")
    dsa = fm[(fm["method"] == "dsa")].set_index("ipc")["top1"]
    assert dsa[10] == 84.6 and dsa[50] == 88.7  # the DSA figures as published
    assert (fm["labels"] == "hard").all() and (fm["norm"] == "instance").all()
    whole = load_published(PUBLISHED, dataset="cifar10")
    assert whole.loc[whole["method"] == "whole dataset", "ipc"].isna().all()


def test_every_shipped_csv_loads_with_the_known_protocol_names():
    names = row_protocols()  # the shipped protocol files and the peers' we name only
    assert set(protocol_files()) <= set(names) and {"mtt", "gvbsm", "cim"} <= set(named_protocols()) <= set(names)
    for path in sorted(PUBLISHED.glob("*.csv")):
        table = load_published(path)
        assert set(table["protocol"]) <= set(names) | {"unstated"}, path


def test_shipped_rows_carry_their_sources_protocol():
    table = load_published(PUBLISHED)
    of = lambda dataset, method: set(table.loc[(table["dataset"] == dataset)  # noqa: E731
                                               & (table["method"] == method), "protocol"])
    assert of("fashion_mnist", "dc") == {"dc"} and of("fashion_mnist", "dsa") == {"dsa"}
    assert of("fashion_mnist", "random") == {"dc"} and of("fashion_mnist", "whole dataset") == {"dc"}
    assert of("mnist", "dc") == {"dc_mnist"} and of("mnist", "dsa") == {"dsa"}
    assert of("mnist", "random") == {"dc_mnist"} and of("mnist", "whole dataset") == {"dc_mnist"}
    assert of("cifar10", "dm") == {"dsa"} and of("cifar10", "mtt") == {"mtt"}
    assert of("fashion_mnist", "kip") == {"unstated"} and of("imagenet1k", "teddy") == {"unstated"}
    assert of("imagenet1k", "g-vbsm") == {"gvbsm_imagenet1k"} and of("tiny_imagenet", "g-vbsm") == {"gvbsm"}
    assert of("tiny_imagenet", "sre2l") == {"sre2l_tiny_imagenet"}
    assert of("imagenet1k", "rded") == {"rded"} and of("imagenet1k", "edc") == {"edc_imagenet1k"}
    assert of("imagenet1k", "sre2l") == {"sre2l_imagenet1k", "cim"}  # its own, and CIM's re-evaluation
    # DC Table 1's Fashion-MNIST and MNIST baselines
    fm = load_published(PUBLISHED, dataset="fashion_mnist")
    random = fm[fm["method"] == "random"].set_index("ipc")
    assert list(random["top1"]) == [51.4, 73.8, 82.5] and list(random["std"]) == [3.8, 0.7, 0.7]
    assert fm.loc[fm["method"] == "whole dataset", "top1"].tolist() == [93.5]
    mnist = load_published(PUBLISHED, dataset="mnist")
    assert mnist[mnist["method"] == "dc"]["top1"].tolist() == [91.7, 97.4, 98.8]
    assert mnist[mnist["method"] == "dsa"]["top1"].tolist() == [88.7, 97.8, 99.2]
    assert mnist.loc[mnist["method"] == "whole dataset", "top1"].tolist() == [99.6]


def test_every_csv_of_the_folder_is_read(tmp_path):
    (tmp_path / "a.csv").write_text(f"# comment\n{HEADER}\nfashion_mnist,x,1,convnet,soft,rded,batch,50,1.2,me\n")
    (tmp_path / "b.csv").write_text(f"{HEADER}\nfashion_mnist,y,10,convnet,hard,unstated,,80,,you\n")
    table = load_published(tmp_path)
    assert list(table["method"]) == ["x", "y"] and table["std"].isna().tolist() == [False, True]
    assert list(table["protocol"]) == ["rded", "unstated"]
    assert table["norm"].isna().tolist() == [False, True]  # empty norm: not stated by the source
    assert list(load_published(tmp_path / "b.csv")["method"]) == ["y"]  # or one named file


def test_the_known_protocol_names_are_a_parameter(tmp_path):
    (tmp_path / "a.csv").write_text(f"{HEADER}\nfashion_mnist,x,1,convnet,hard,my_protocol,batch,50,,me\n")
    assert list(load_published(tmp_path, protocols=["my_protocol"])["protocol"]) == ["my_protocol"]
    with pytest.raises(TeddyError, match=r"a\.csv line 2: field 'protocol' is 'my_protocol', expected one of "
                                         r"\['dc', 'dsa'\] or 'unstated'"):
        load_published(tmp_path, protocols=("dc", "dsa"))
    folder = tmp_path / "protocols"
    folder.mkdir()
    for name in ("dc", "my_protocol"):
        (folder / f"{name}.yaml").write_text(f"name: {name}\n")
    # a folder of your own recipes without named/ still knows the peers' names (the repository's)
    assert row_protocols(folder) == ("dc", "my_protocol") + tuple(named_protocols())
    (folder / "named").mkdir()
    (folder / "named" / "their_protocol.yaml").write_text(
        "name: their_protocol\ndescription: a peer's\nsource: a paper\nclosest: [dc]\n")
    assert row_protocols(folder) == ("dc", "my_protocol", "their_protocol")
    assert list(load_published(tmp_path, protocols=row_protocols(folder))["method"]) == ["x"]


@pytest.mark.parametrize("row, field", [
    ("fashion_mnist,x,1,convnet,soft,rded,batch,high,,me", "top1"),
    ("fashion_mnist,x,1,convnet,soft,rded,batch,101,,me", "top1"),
    ("fashion_mnist,x,0,convnet,soft,rded,batch,50,,me", "ipc"),
    ("fashion_mnist,x,1,convnet,kd,rded,batch,50,,me", "labels"),
    ("fashion_mnist,x,1,convnet,soft,online_kd,batch,50,,me", "protocol"),
    ("fashion_mnist,x,1,convnet,soft,,batch,50,,me", "protocol"),
    ("fashion_mnist,x,1,convnet,soft,rded,weird,50,,me", "norm"),
    ("fashion_mnist,x,1,convnet,soft,rded,batch,50,-1,me", "std"),
    ("fashion_mnist,x,1,convnet,soft,rded,batch,50,,", "source"),
])
def test_a_bad_field_names_the_file_and_line(tmp_path, row, field):
    path = tmp_path / "p.csv"
    path.write_text(f"# a comment line\n{HEADER}\nfashion_mnist,ok,1,convnet,soft,rded,batch,50,,me\n{row}\n")
    with pytest.raises(TeddyError, match=rf"p\.csv line 4: field '{field}'"):
        load_published(tmp_path)


def test_an_unknown_protocol_lists_the_known_ones(tmp_path):
    (tmp_path / "p.csv").write_text(f"{HEADER}\nfashion_mnist,x,1,convnet,soft,online_kd,batch,50,,me\n")
    with pytest.raises(TeddyError) as error:
        load_published(tmp_path)
    message = str(error.value)
    assert "\n" not in message and str(tmp_path / "p.csv") + " line 2" in message
    assert all(name in message for name in row_protocols()) and "'unstated'" in message


def test_a_wrong_header_or_field_count_is_named(tmp_path):
    (tmp_path / "p.csv").write_text("dataset,method,top1\nfashion_mnist,x,50\n")
    with pytest.raises(TeddyError, match=r"p\.csv line 1: header"):
        load_published(tmp_path)
    old = "dataset,method,ipc,student,labels,norm,top1,std,source"  # before the protocol column
    (tmp_path / "p.csv").write_text(f"{old}\nfashion_mnist,x,1,convnet,soft,batch,50,,me\n")
    with pytest.raises(TeddyError, match=r"p\.csv line 1: header"):
        load_published(tmp_path)
    (tmp_path / "p.csv").write_text(f"{HEADER}\nfashion_mnist,x,1,convnet,soft,rded,batch,50\n")
    with pytest.raises(TeddyError, match=r"p\.csv line 2: 8 fields"):
        load_published(tmp_path)
    with pytest.raises(TeddyError, match="published results not found"):
        load_published(tmp_path / "nowhere")
