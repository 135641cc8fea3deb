"""An image's boxes and class from what labels it (pure: no Beam, no I/O).

An image of an unlabelled split (its source found no labels for the split: CLS-LOC test) has
neither class nor boxes (schema.LABEL_NONE). Otherwise, two rules, one per kind of label
(pairing.py decides which an image has):
  * a class folder labels the image (CLS-LOC train, the folder layout): the folder's class,
    whatever its boxes say; where the largest box names another class it is counted, since
    ImageNet's own classification label is the folder's;
  * otherwise its boxes do: the largest box's class (`schema.largest_box_label`, compared in
    pixels of the annotated frame so equal areas tie exactly and go to document order), and
    background for an XML without objects (a DET negative). A solution-CSV row exists only to
    label its image, so one without boxes is that image's error, never a silent background.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from detrec.core import schema
from detrec.preprocess import annotations
from detrec.preprocess.annotations import AnnotationError

# The codes of an image's class (not its boxes) being wrong (its errors' stage is "label").
LABEL_CODES = ("unknown_synset", "unknown_class", "reserved_class_name", "empty_csv_row")


@dataclasses.dataclass(frozen=True)
class Labels:
    """What a record says about its image's content.

    Attributes:
      boxes: normalised, clipped, with class ids, in document order.
      class_label, class_text: the image's class (None, "": an image of an unlabelled split).
      source: where the class came from (schema.LABEL_FROM_*).
      disagrees: the class came from a folder and the largest box names another one.
    """

    boxes: tuple[schema.Box, ...]
    class_label: int | None
    class_text: str
    source: str
    disagrees: bool = False


NO_LABELS = Labels((), None, "", schema.LABEL_NONE)  # what an image of an unlabelled split gets


def label_image(ann: annotations.Annotation, boxes_from: str, folder: str, image_width: int, image_height: int,
                id_of: Callable[[str], int | None], where: str = "<image>", labelled: bool = True) -> Labels:
    """Boxes and class of one image.

    Args:
      ann: its boxes (an empty Annotation when it has none).
      boxes_from: where they came from, as its source names it ("xml", "csv"), or "none".
      folder: the class folder that labels it, "" when its boxes do.
      image_width, image_height: the decoded image's size (the frame of boxes without `<size>`).
      id_of: class name -> id (1..K), None when the vocabulary lacks it.
      where: the annotation (or image) path, for messages.
      labelled: whether its split is (SplitSource.labelled); False: no class, no boxes (its
        tree has none for it).

    Raises:
      AnnotationError: `unknown_synset` (a box), `unknown_class` (the folder), `reserved_class_name`
        (a box or folder named as the background class is), `empty_csv_row` (a CSV row without
        boxes labels nothing), or a box error.
    """
    if not labelled:
        return NO_LABELS
    boxes = annotations.normalise(ann, image_width, image_height, id_of, where)
    largest = schema.largest_box_label(boxes, annotations.pixel_areas(ann, image_width, image_height))
    if not folder:
        source = boxes_from  # a box-labelled record's class comes from where its boxes did
        if source == schema.LABEL_FROM_CSV and not boxes:
            raise AnnotationError("empty_csv_row", f"{where}: no boxes, so no class for the image")
        return Labels(boxes, largest[0], largest[1], source)
    if annotations.is_background_name(folder):
        raise AnnotationError("reserved_class_name", f"{where}: class folder {folder!r} is the background class "
                                                     "(id 0: no object), not an object class; rename the folder")
    label = id_of(folder)
    if label is None:
        raise AnnotationError("unknown_class", f"{where}: class folder {folder!r} is not a class of this dataset "
                                               "(not a train class folder, nor in the synset map)")
    return Labels(boxes, label, folder, schema.LABEL_FROM_FOLDER, disagrees=bool(boxes) and largest[1] != folder)
