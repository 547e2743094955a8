#!/usr/bin/env python3
"""Regenerates the window layout ("QMainWindow State") of rviz/pebal.rviz.

RViz restores its dock layout from ``Window Geometry: QMainWindow State``, the hex of Qt's own
``QMainWindow.saveState()``; without it every image display is a thumbnail in the left dock and the
(unused) 3D view takes most of the window. This script lays out a stand-in main window with Qt
itself -- the same dock object names RViz gives its panels (a display's dock is named after the
display) -- and writes the state Qt saves into the config:

    +-----------+-----------------------+-----------------------+-+
    | Displays  | Camera                | PEBAL overlay         |3|
    |           |                       |                       |D|
    |           +-----------------------+-----------------------+ |
    |           | Semantic              | Anomaly mask          | |
    +-----------+-----------------------+-----------------------+-+

The 3D view (RViz's central widget, which cannot be removed) is squeezed to a strip at the right.

Needs PyQt5 on Qt 5 (Debian: ``apt-get install python3-pyqt5``; RViz 2 on Jazzy uses Qt 5), only
to regenerate the layout; run with no display: ``QT_QPA_PLATFORM=offscreen python3 rviz/make_layout.py``.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

CONFIG = Path(__file__).resolve().parent / "pebal.rviz"
# (dock name = the display's Name in the config, row, column) of the image grid
GRID = (("Camera", 0, 0), ("PEBAL overlay", 0, 1), ("Semantic", 1, 0), ("Anomaly mask", 1, 1))
SIDE = "Displays"
_APP = None


def layout_state(width: int, height: int, side_width: int) -> bytes:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PyQt5.QtCore import Qt
    from PyQt5.QtWidgets import (QApplication, QDockWidget, QHBoxLayout, QMainWindow, QStatusBar, QToolBar,
                                 QToolButton, QWidget)

    global _APP
    app = _APP = QApplication.instance() or QApplication(sys.argv[:1])   # kept: Qt needs it alive
    win = QMainWindow()
    win.setObjectName("VisualizationFrame")
    win.menuBar().addMenu("&File")
    tools = QToolBar("Tools")
    tools.setObjectName("Tools")            # RViz's toolbar; its place is part of the saved state
    tools.addAction("Interact")
    win.addToolBar(Qt.TopToolBarArea, tools)
    win.setStatusBar(QStatusBar())
    # RViz's central widget: hide-left-dock button, the 3D render panel, hide-right-dock button
    central = QWidget()
    row = QHBoxLayout(central)
    row.setContentsMargins(0, 0, 0, 0)
    row.setSpacing(0)
    for stretch in (0, 1, 0):
        w = QToolButton() if stretch == 0 else QWidget()
        if stretch == 0:
            w.setFixedWidth(9)
        row.addWidget(w, stretch)
    win.setCentralWidget(central)

    def dock(name: str) -> QDockWidget:
        d = QDockWidget(name)
        d.setObjectName(name)               # what saveState()/restoreState() match docks by
        d.setWidget(QWidget())
        return d

    side = dock(SIDE)
    win.addDockWidget(Qt.LeftDockWidgetArea, side)
    cells = {(r, c): dock(name) for name, r, c in GRID}
    win.addDockWidget(Qt.RightDockWidgetArea, cells[0, 0])
    win.splitDockWidget(cells[0, 0], cells[1, 0], Qt.Vertical)
    win.splitDockWidget(cells[0, 0], cells[0, 1], Qt.Horizontal)
    win.splitDockWidget(cells[1, 0], cells[1, 1], Qt.Horizontal)
    win.resize(width, height)
    win.show()
    app.processEvents()
    grid_width = width - side_width
    win.resizeDocks([side, cells[0, 0]], [side_width, grid_width // 2], Qt.Horizontal)
    win.resizeDocks([cells[0, 0], cells[0, 1]], [grid_width // 2, grid_width // 2], Qt.Horizontal)
    win.resizeDocks([cells[1, 0], cells[1, 1]], [grid_width // 2, grid_width // 2], Qt.Horizontal)
    win.resizeDocks([cells[0, 0], cells[1, 0]], [height // 2, height // 2], Qt.Vertical)
    app.processEvents()
    for name, d in [(SIDE, side)] + [(n, cells[r, c]) for n, r, c in GRID]:
        g = d.geometry()
        print(f"  {name:14s} {g.width()}x{g.height()}+{g.x()}+{g.y()}")
    g = central.geometry()
    print(f"  {'(3D view)':14s} {g.width()}x{g.height()}+{g.x()}+{g.y()}")
    return bytes(win.saveState())


def write_state(config: Path, state: bytes, width: int, height: int) -> None:
    text = config.read_text(encoding="utf-8")
    geometry = text.index("\nWindow Geometry:\n")
    head, tail = text[:geometry], text[geometry:]
    tail = re.sub(r"\n  QMainWindow State: [0-9a-f]*\n", "\n", tail)
    tail = re.sub(r"\n  Width: \d+\n", f"\n  Width: {width}\n", tail)
    tail = re.sub(r"\n  Height: \d+\n", f"\n  Height: {height}\n", tail)
    tail = tail.replace("\n  Hide Right Dock:", f"\n  QMainWindow State: {state.hex()}\n  Hide Right Dock:", 1)
    config.write_text(head + tail, encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=CONFIG, help="the .rviz file to update (default: %(default)s)")
    ap.add_argument("--width", type=int, default=1920, help="window width in pixels (default: %(default)s)")
    ap.add_argument("--height", type=int, default=1080, help="window height in pixels (default: %(default)s)")
    ap.add_argument("--side-width", type=int, default=400,
                    help="width of the Displays panel on the left (default: %(default)s)")
    args = ap.parse_args()
    state = layout_state(args.width, args.height, args.side_width)
    write_state(args.config, state, args.width, args.height)
    print(f"wrote a {len(state)}-byte window state into {args.config}")


if __name__ == "__main__":
    main()
