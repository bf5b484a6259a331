"""The ten-class ImageNet subsets of MTT and its successors, as WordNet ids (class folder names).

Source: GeorgeCazenavette/mtt-distillation, utils.py (class `Config`), which lists each subset
as ImageNet-1K class indices in the order used for the labels. The indices were turned into
wnids with the standard ImageNet-1K class index (index k = the k-th wnid in sorted order, as
torchvision's ImageNet/ImageFolder assigns them), read from a public copy of
imagenet_class_index.json. Each entry keeps the index so that the mapping can be checked.
Resolution, normalisation and resizing follow MTT's loader: 128 x 128 pixels (resize the
short side, then centre crop), ImageNet mean/std.
"""

from __future__ import annotations

IMAGE_SIZE = 128
RESIZE = "center_crop"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# name -> [(ImageNet-1K index, wnid, class name)], in MTT's label order
SUBSETS: dict[str, list[tuple[int, str, str]]] = {
    "imagenette": [
        (0, "n01440764", "tench"), (217, "n02102040", "English springer"),
        (482, "n02979186", "cassette player"), (491, "n03000684", "chain saw"), (497, "n03028079", "church"),
        (566, "n03394916", "French horn"), (569, "n03417042", "garbage truck"), (571, "n03425413", "gas pump"),
        (574, "n03445777", "golf ball"), (701, "n03888257", "parachute"),
    ],
    "imagewoof": [
        (193, "n02096294", "Australian terrier"), (182, "n02093754", "Border terrier"),
        (258, "n02111889", "Samoyed"), (162, "n02088364", "beagle"), (155, "n02086240", "Shih-Tzu"),
        (167, "n02089973", "English foxhound"), (159, "n02087394", "Rhodesian ridgeback"),
        (273, "n02115641", "dingo"), (207, "n02099601", "golden retriever"),
        (229, "n02105641", "Old English sheepdog"),
    ],
    "imagefruit": [
        (953, "n07753275", "pineapple"), (954, "n07753592", "banana"), (949, "n07745940", "strawberry"),
        (950, "n07747607", "orange"), (951, "n07749582", "lemon"), (957, "n07768694", "pomegranate"),
        (952, "n07753113", "fig"), (945, "n07720875", "bell pepper"), (943, "n07718472", "cucumber"),
        (948, "n07742313", "Granny Smith"),
    ],
    "imageyellow": [
        (309, "n02206856", "bee"), (986, "n12057211", "yellow lady's slipper"), (954, "n07753592", "banana"),
        (951, "n07749582", "lemon"), (987, "n12144580", "corn"), (779, "n04146614", "school bus"),
        (599, "n03530642", "honeycomb"), (291, "n02129165", "lion"),
        (72, "n01773157", "black and gold garden spider"), (11, "n01531178", "goldfinch"),
    ],
    "imagemeow": [
        (281, "n02123045", "tabby"), (282, "n02123159", "tiger cat"), (283, "n02123394", "Persian cat"),
        (284, "n02123597", "Siamese cat"), (285, "n02124075", "Egyptian cat"), (291, "n02129165", "lion"),
        (292, "n02129604", "tiger"), (290, "n02128925", "jaguar"), (289, "n02128757", "snow leopard"),
        (287, "n02127052", "lynx"),
    ],
    "imagesquawk": [
        (84, "n01806143", "peacock"), (130, "n02007558", "flamingo"), (88, "n01818515", "macaw"),
        (144, "n02051845", "pelican"), (145, "n02056570", "king penguin"), (22, "n01614925", "bald eagle"),
        (96, "n01843383", "toucan"), (9, "n01518878", "ostrich"), (100, "n01860187", "black swan"),
        (89, "n01819313", "sulphur-crested cockatoo"),
    ],
}


def subset_wnids(name: str) -> list[str]:
    return [wnid for _, wnid, _ in SUBSETS[name]]


def subset_names(name: str) -> list[str]:
    return [label for _, _, label in SUBSETS[name]]
