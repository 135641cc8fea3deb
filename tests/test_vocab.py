"""Class vocabularies: synset maps in the devkit formats, and from data."""

from __future__ import annotations

import pytest

from detrec.core.dataset_info import ClassInfo
from detrec.preprocess import vocab


def test_map_det_ids_define_the_order():
    v = vocab.parse_synset_map("n02691156 2 airplane\nn02672831 1 accordion\n")
    assert v.synsets == ("n02672831", "n02691156") and v.names == ("accordion", "airplane")
    assert v.id_of("n02691156") == 2 and v.id_of("n0") is None and v.num_classes == 3


def test_loc_synset_mapping_keeps_file_order_and_full_names():
    v = vocab.parse_synset_map("n01440764 tench, Tinca tinca\n\nn01443537 goldfish, Carassius auratus\n")
    assert v.classes()[1:] == (ClassInfo(1, "n01440764", "tench, Tinca tinca"),
                               ClassInfo(2, "n01443537", "goldfish, Carassius auratus"))


def test_labels_txt_has_background_first():
    assert vocab.from_synsets(["b", "a", "b"]).labels_txt() == "0\tbackground\tbackground\n1\ta\ta\n2\tb\tb\n"


@pytest.mark.parametrize("text, message", [("", "no classes"), ("n1 a\nn1 b\n", "listed twice"),
                                           ("background 1 x\n", "reserved")])
def test_bad_maps_are_named(text, message):
    with pytest.raises(vocab.VocabError, match=message):
        vocab.parse_synset_map(text, "map.txt")
