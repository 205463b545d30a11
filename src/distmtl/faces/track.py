"""Face ids across the frames of a video: a greedy IoU tracker.

Each face of a frame takes the id of the not yet matched track whose last box overlaps it most
(IoU at least ``min_iou``), best-scoring faces first; a face matching no track starts a new id.
A track not seen for more than ``max_gap`` processed frames is forgotten.
"""

from __future__ import annotations

from collections.abc import Sequence

from distmtl.faces.detect import Face, iou


class IouTracker:
    def __init__(self, min_iou: float = 0.3, max_gap: int = 5):
        self.min_iou, self.max_gap = float(min_iou), int(max_gap)
        self.tracks: dict[int, tuple[tuple[float, ...], int]] = {}  # id -> (last box, frames unseen)
        self.next_id = 0

    def update(self, faces: Sequence[Face]) -> list[Face]:
        """Set ``face_id`` on every face of one frame (in place) and return them."""
        free = set(self.tracks)
        for face in sorted(faces, key=lambda f: -f.score):
            best, overlap = None, self.min_iou
            for tid in free:
                o = iou(face.box, self.tracks[tid][0])
                if o >= overlap:
                    best, overlap = tid, o
            if best is None:
                best, self.next_id = self.next_id, self.next_id + 1
            else:
                free.discard(best)
            face.face_id = best
            self.tracks[best] = (face.box, 0)
        for tid in free:
            box, unseen = self.tracks[tid]
            if unseen + 1 > self.max_gap:
                del self.tracks[tid]
            else:
                self.tracks[tid] = (box, unseen + 1)
        return list(faces)
