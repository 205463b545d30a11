"""``distmtl faces show``: detect the faces of an image, print them, draw them into a PNG."""

from __future__ import annotations

from pathlib import Path


def cmd_faces_show(args) -> int:
    from distmtl.data.transforms import load_image  # noqa: F401  (layer 3, beside faces)
    from distmtl.faces.align import FaceCropper, FacePreprocessing
    from distmtl.faces.draw import save_faces_png
    from distmtl.faces.detect import LANDMARK_NAMES

    pre = FacePreprocessing(mode=args.mode, size=args.size, margin=args.margin, backend=args.backend,
                            min_face_score=args.min_face_score)
    image = load_image(args.image, 3)
    found = FaceCropper(pre).faces(image)
    print(f"{args.image}: {len(found)} face(s) ({args.backend})")
    for k, (face, _) in enumerate(found):
        x, y, w, h = face.box
        marks = "" if face.landmarks is None else " " + " ".join(
            f"{n}=({px:.1f},{py:.1f})" for n, (px, py) in zip(LANDMARK_NAMES, face.landmarks))
        print(f"  face {k}: score {face.score:.3f} box ({x:.0f},{y:.0f},{w:.0f},{h:.0f}){marks}")
    if args.png:
        path = save_faces_png(args.png, image, [f for f, _ in found], [c for _, c in found])
        print(f"drawing written to {path}")
    return 0


def add_face_options(p, mode_default: str = "align") -> None:
    """The face preprocessing options shared by ``faces show`` and ``data prepare``."""
    from distmtl.faces.detect import BACKENDS, DEFAULT_BACKEND, MODES

    p.add_argument("--backend", default=DEFAULT_BACKEND, choices=list(BACKENDS), help="face detector")
    p.add_argument("--mode", default=mode_default, choices=list(MODES),
                   help="align: 5-point alignment (default); box: square box crop; none: no detection")
    p.add_argument("--size", type=int, default=112, help="crop side in pixels (default 112)")
    p.add_argument("--margin", type=float, default=0.0,
                   help="context around the face, as a fraction of its size per side (default 0)")
    p.add_argument("--min-face-score", type=float, default=None,
                   help="drop detections scoring below this (default: the backend's own threshold)")


def add_parsers(sub) -> None:
    faces = sub.add_parser("faces", help="face detection and alignment").add_subparsers(
        dest="faces_command", required=True)
    p = faces.add_parser("show", help="detect the faces of an image; --png draws them with their crops")
    p.add_argument("image", type=Path)
    p.add_argument("--png", type=Path, help="PNG to write: the image with boxes and landmarks, crops below")
    add_face_options(p)
    p.set_defaults(func=cmd_faces_show)
