"""Official dataset layouts (300W, 300VW, AFLW, WFLW) -> SBR list files, with bad-input reporting.

What belongs here: walking the folders users download, checking every file that a list will name
(images decode, annotations parse with the right number of points, videos open and have one
annotation per frame), and writing the SBR lists of docs/method_notes.md §2.3. What does not:
parsing the formats themselves (see formats.py) and reading crops for training (datasets.py).

Bad input never stops a run by default: each bad file gets a one-line message naming it and the
problem, is skipped, and is counted by reason in a :class:`Report`; with ``strict=True`` the first
one raises :class:`~tsal_dist.data.formats.AnnotationError` instead.

List paths are written relative to the folder of the list file (``read_list`` resolves them
against it), so the output folder and the dataset can move together. Video frames are referenced
as ``<path>/vid.avi#<0-based frame index>``; frames are never extracted.

Modules:

- :mod:`~tsal_dist.data.layouts.report`: :class:`Report` (bad inputs by reason, lists written).
- :mod:`~tsal_dist.data.layouts.common`: what the preparers share: image and video checks,
  whitespace-free list paths (link, or atomic copy), list writing at the end of a preparer.
- :mod:`~tsal_dist.data.layouts.w300`, :mod:`~tsal_dist.data.layouts.vw300`,
  :mod:`~tsal_dist.data.layouts.aflw`, :mod:`~tsal_dist.data.layouts.wflw`: one per dataset, with
  its official splits.
"""

from tsal_dist.data.layouts.aflw import prepare_aflw
from tsal_dist.data.layouts.common import check_image, video_frame_count
from tsal_dist.data.layouts.report import Report
from tsal_dist.data.layouts.vw300 import VW300_TEST, VW300_TRAIN, prepare_300vw
from tsal_dist.data.layouts.w300 import W300_SUBSETS, load_300w_boxes, prepare_300w
from tsal_dist.data.layouts.wflw import prepare_wflw

__all__ = [
    "VW300_TEST",
    "VW300_TRAIN",
    "W300_SUBSETS",
    "Report",
    "check_image",
    "load_300w_boxes",
    "prepare_300vw",
    "prepare_300w",
    "prepare_aflw",
    "prepare_wflw",
    "video_frame_count",
]
