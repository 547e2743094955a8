"""Street furniture, vehicles and people for the synthetic scenes, drawn in perspective with cv2.

A ``Painter`` holds the frame buffers (float32 RGB, uint8 Cityscapes label ids, a float32 shade map)
and the camera. Objects live in road-aligned world coordinates (X across the road, Y up, Z ahead)
and are drawn as projected boxes and polygons; each call paints colour and label together so the
label map is exactly what was drawn.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

# Cityscapes label ids (labels.LABELS); ANOMALY_ID is internal to the renderer.
UNLABELED, EGO, ROAD, SIDEWALK, BUILDING, WALL, FENCE = 0, 1, 7, 8, 11, 12, 13
POLE, LIGHT, SIGN, VEG, TERRAIN, SKY = 17, 19, 20, 21, 22, 23
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = 24, 25, 26, 27, 28, 31, 32, 33
ANOMALY_ID = 254

_SHIFT = 4
_ONE = 1 << _SHIFT
_LIM = 1 << 20  # keep fixed-point coordinates far inside int32
# corner indices of a box's faces (0-3 near face, 4-7 far face; x0,x1,x1,x0 / y0,y0,y1,y1)
_LEFT = np.array([0, 3, 7, 4])
_RIGHT = np.array([1, 2, 6, 5])
_TOP = np.array([3, 2, 6, 7])


@dataclass
class View:
    """Pinhole camera over a road whose centre line is at X_cam = c0 + k Z^2 (a gentle curve)."""
    width: int
    height: int
    f: float
    cx: float
    yh: float       # horizon row
    cam_h: float    # camera height (m)
    c0: float       # road centre's lateral offset from the camera (m)
    k: float        # curvature term (1/m)

    def center(self, z):
        return self.c0 + self.k * z * z

    def proj(self, x, y, z):
        """Road frame (x across, y up, z ahead, z > 0) to pixel coordinates (u, v)."""
        inv = self.f / z
        return self.cx + (x + self.c0 + self.k * z * z) * inv, self.yh + (self.cam_h - y) * inv


@dataclass
class Obj:
    kind: str
    x: float                 # lateral position of the object's centre (m, road frame, + = right)
    z: float                 # world position along the road at t = 0 (m)
    v: float = 0.0           # speed along the road (m/s)
    p: dict[str, Any] = field(default_factory=dict)


def _c(col) -> tuple[float, float, float]:
    return (float(col[0]), float(col[1]), float(col[2]))


class Painter:
    def __init__(self, img: np.ndarray, ids: np.ndarray, shade: np.ndarray, view: View):
        self.img, self.ids, self.shade, self.view = img, ids, shade, view
        self.h, self.w = ids.shape

    # ------------------------------------------------------------------ primitives
    def poly(self, xs, ys, color, lid: int) -> None:
        # Objects are culled before z < 1.2 m, so fixed-point coordinates stay far inside int32.
        pts = np.empty((len(xs), 2), np.int32)
        pts[:, 0] = xs * _ONE
        pts[:, 1] = ys * _ONE
        cv2.fillPoly(self.img, [pts], _c(color), cv2.LINE_8, _SHIFT)
        cv2.fillPoly(self.ids, [pts], int(lid), cv2.LINE_8, _SHIFT)

    def ellipse(self, cx, cy, ax, ay, color, lid: int, angle: float = 0.0) -> None:
        c = (int(np.clip(cx * _ONE, -_LIM, _LIM)), int(np.clip(cy * _ONE, -_LIM, _LIM)))
        a = (max(1, int(min(ax * _ONE, _LIM))), max(1, int(min(ay * _ONE, _LIM))))
        cv2.ellipse(self.img, c, a, angle, 0, 360, _c(color), -1, cv2.LINE_8, _SHIFT)
        cv2.ellipse(self.ids, c, a, angle, 0, 360, int(lid), -1, cv2.LINE_8, _SHIFT)

    def line(self, x0, y0, x1, y1, thick: float, color, lid: int) -> None:
        t = max(1, int(round(thick)))
        p0 = (int(np.clip(x0 * _ONE, -_LIM, _LIM)), int(np.clip(y0 * _ONE, -_LIM, _LIM)))
        p1 = (int(np.clip(x1 * _ONE, -_LIM, _LIM)), int(np.clip(y1 * _ONE, -_LIM, _LIM)))
        cv2.line(self.img, p0, p1, _c(color), t, cv2.LINE_8, _SHIFT)
        cv2.line(self.ids, p0, p1, int(lid), t, cv2.LINE_8, _SHIFT)

    def contact_shadow(self, x, z, half_w, half_l, strength) -> None:
        """Darken the ground under an object (ellipse on the shade map, applied before objects)."""
        u, v = self.view.proj(np.array([x - half_w, x + half_w, x]), np.zeros(3),
                              np.array([z, z, z - half_l]))
        u2, v2 = self.view.proj(x, 0.0, z + half_l)
        cy = (v[2] + v2) / 2
        ay = max(0.5, abs(v[2] - v2) / 2)
        ax = max(0.5, abs(u[1] - u[0]) / 2 * 1.1)
        c = (int(np.clip((u[0] + u[1]) / 2 * _ONE, -_LIM, _LIM)), int(np.clip(cy * _ONE, -_LIM, _LIM)))
        cv2.ellipse(self.shade, c, (int(min(ax * _ONE, _LIM)), int(min(ay * _ONE, _LIM))), 0, 0, 360,
                    float(1 - strength), -1, cv2.LINE_8, _SHIFT)

    def box(self, x0, x1, y0, y1, z0, z1, color, lid: int, near=None, side=None, top=None,
            side_f: float = 0.78, top_f: float = 1.12, inset_x: float = 0.0, inset_z: float = 0.0) -> None:
        """An axis-aligned box; draws the faces a camera at X=0 (road frame: -c0) can see."""
        view = self.view
        cam_x = -view.c0
        # inset_x / inset_z pull the top edges in: a frustum (sloped windscreens, tapered cabins).
        u, v = view.proj(np.array([x0, x1, x1 - inset_x, x0 + inset_x, x0, x1, x1 - inset_x, x0 + inset_x]),
                         np.array([y0, y0, y1, y1, y0, y0, y1, y1]),
                         np.array([z0, z0, z0 + inset_z, z0 + inset_z, z1, z1, z1 - inset_z, z1 - inset_z]))
        if x0 > cam_x:
            face = _LEFT
        elif x1 < cam_x:
            face = _RIGHT
        else:
            face = None
        if face is not None:
            self.poly(u[face], v[face], side if side is not None else np.asarray(color, np.float32) * side_f, lid)
        if y1 < view.cam_h:
            self.poly(u[_TOP], v[_TOP], top if top is not None else np.asarray(color, np.float32) * top_f, lid)
        self.poly(u[:4], v[:4], near if near is not None else color, lid)

    def rect_on_face(self, xa, xb, ya, yb, z, color, lid: int) -> None:
        u, v = self.view.proj(np.array([xa, xb, xb, xa]), np.array([ya, ya, yb, yb]), np.array([z] * 4))
        self.poly(u, v, color, lid)

    # ------------------------------------------------------------------ objects
    def draw(self, o: Obj, z: float) -> None:
        getattr(self, "_" + o.kind)(o, z)

    def _car(self, o: Obj, z: float) -> None:
        p = o.p
        w, length, h, col = p["w"], p["l"], p["h"], np.asarray(p["color"], np.float32)
        x0, x1 = o.x - w / 2, o.x + w / 2
        z1 = z + length
        dark = np.array([22, 22, 24], np.float32)
        self.box(x0 + 0.12, x1 - 0.12, 0.0, 0.32, z + 0.25, z1 - 0.25, dark, CAR)
        body_top = h * p["body"]
        self.box(x0, x1, 0.3, body_top, z, z1, col, CAR)
        glass = np.asarray(p["glass"], np.float32)
        ca, cb = (0.22, 0.8) if p["rear"] else (0.3, 0.85)
        self.box(x0 + 0.06, x1 - 0.06, body_top, h, z + ca * length, z + cb * length, col, CAR,
                 near=glass, side=glass * 0.85, top=col * 1.15, inset_x=0.14, inset_z=0.3)
        if p["rear"]:  # tail lights and a plate on the visible rear
            lc = np.array([200, 25, 25], np.float32) if not p["lit"] else np.array([255, 60, 50], np.float32)
            self.rect_on_face(x0 + 0.05, x0 + 0.35, body_top - 0.25, body_top - 0.08, z, lc, CAR)
            self.rect_on_face(x1 - 0.35, x1 - 0.05, body_top - 0.25, body_top - 0.08, z, lc, CAR)
        else:
            lc = np.array([235, 235, 210], np.float32)
            self.rect_on_face(x0 + 0.08, x0 + 0.38, body_top - 0.22, body_top - 0.08, z, lc, CAR)
            self.rect_on_face(x1 - 0.38, x1 - 0.08, body_top - 0.22, body_top - 0.08, z, lc, CAR)
        self.rect_on_face(o.x - 0.26, o.x + 0.26, 0.38, 0.5, z, (225, 225, 220), CAR)
        cam_x = -self.view.c0
        sx = x0 - 0.01 if x0 > cam_x else (x1 + 0.01 if x1 < cam_x else None)
        tyre = np.array([18, 18, 20], np.float32)
        for wz in (z + 0.55, z1 - 1.2):  # wheels on the side facing the camera
            if sx is not None:
                u, v = self.view.proj(np.array([sx, sx, sx, sx]), np.array([0.0, 0.62, 0.62, 0.0]),
                                      np.array([wz, wz, wz + 0.66, wz + 0.66]))
                self.poly(u, v, tyre, CAR)
        for xa in (x0 + 0.08, x1 - 0.32):  # tyres showing under the near bumper
            self.rect_on_face(xa, xa + 0.24, 0.0, 0.3, z + 0.55, tyre, CAR)

    def _truck(self, o: Obj, z: float) -> None:
        p = o.p
        col, box_col = np.asarray(p["color"], np.float32), np.asarray(p["box_color"], np.float32)
        w = p["w"]
        x0, x1 = o.x - w / 2, o.x + w / 2
        dark = np.array([25, 25, 27], np.float32)
        cab_len, box_len = 2.2, p["l"] - 2.4
        if p["rear"]:
            cab_z, box_z = z + box_len + 0.2, z
        else:
            cab_z, box_z = z, z + cab_len + 0.2
        parts = [("cab", cab_z), ("box", box_z)]
        parts.sort(key=lambda t: -t[1])  # far part first
        for name, pz in parts:
            if name == "cab":
                self.box(x0 + 0.05, x1 - 0.05, 0.45, 2.9, pz, pz + cab_len, col, TRUCK)
                if not p["rear"]:
                    self.rect_on_face(x0 + 0.2, x1 - 0.2, 1.7, 2.6, pz, np.asarray(p["glass"], np.float32), TRUCK)
            else:
                self.box(x0, x1, 0.9, p["h"], pz, pz + box_len, box_col, TRUCK)
        # chassis between the wheels (the road shows through beside it), wheels at the corners
        self.box(x0 + 0.45, x1 - 0.45, 0.35, 0.95, z + 0.3, z + p["l"] - 0.3, dark, TRUCK)
        for wz in (z + 0.6, z + p["l"] - 1.6):
            self.box(x0 + 0.05, x0 + 0.4, 0.0, 0.95, wz, wz + 1.0, dark, TRUCK, side=dark * 1.5)
            self.box(x1 - 0.4, x1 - 0.05, 0.0, 0.95, wz, wz + 1.0, dark, TRUCK, side=dark * 1.5)
        if p["rear"]:
            self.rect_on_face(x0 + 0.1, x0 + 0.4, 1.0, 1.2, z, (210, 30, 30), TRUCK)
            self.rect_on_face(x1 - 0.4, x1 - 0.1, 1.0, 1.2, z, (210, 30, 30), TRUCK)

    def _bus(self, o: Obj, z: float) -> None:
        p = o.p
        col, glass = np.asarray(p["color"], np.float32), np.asarray(p["glass"], np.float32)
        w, length, h = p["w"], p["l"], p["h"]
        x0, x1 = o.x - w / 2, o.x + w / 2
        dark = np.array([25, 25, 27], np.float32)
        self.box(x0 + 0.1, x1 - 0.1, 0.0, 0.4, z + 0.3, z + length - 0.3, dark, BUS)
        self.box(x0, x1, 0.35, h, z, z + length, col, BUS)
        cam_x = -self.view.c0
        sx = x0 if x0 > cam_x else (x1 if x1 < cam_x else None)
        if sx is not None:  # window band along the visible side
            u, v = self.view.proj(np.array([sx] * 4), np.array([1.3, 1.3, h - 0.35, h - 0.35]),
                                  np.array([z + 0.3, z + length - 0.3, z + length - 0.3, z + 0.3]))
            self.poly(u, v, glass * 0.85, BUS)
        self.rect_on_face(x0 + 0.15, x1 - 0.15, 1.4 if p["rear"] else 1.1, h - 0.3, z, glass, BUS)
        for wz in (z + 1.6, z + length - 3.0):
            self.box(x0 - 0.02, x0 + 0.28, 0.0, 0.95, wz, wz + 1.0, dark, BUS, side=dark * 1.5)
            self.box(x1 - 0.28, x1 + 0.02, 0.0, 0.95, wz, wz + 1.0, dark, BUS, side=dark * 1.5)

    def _tram(self, o: Obj, z: float) -> None:
        """A tram (Cityscapes' "train" class): a long low-floor car, window band, pantograph."""
        p = o.p
        col, glass, band = (np.asarray(p[k], np.float32) for k in ("color", "glass", "band"))
        w, length, h = p["w"], p["l"], p["h"]
        x0, x1 = o.x - w / 2, o.x + w / 2
        self.box(x0, x1, 0.25, h, z, z + length, col, TRAIN)
        cam_x = -self.view.c0
        sx = x0 if x0 > cam_x else (x1 if x1 < cam_x else None)
        if sx is not None:
            for y0, y1, c in ((0.25, 0.7, band), (1.0, h - 0.45, glass * 0.85)):
                u, v = self.view.proj(np.array([sx] * 4), np.array([y0, y0, y1, y1]),
                                      np.array([z, z + length, z + length, z]))
                self.poly(u, v, c, TRAIN)
        self.rect_on_face(x0 + 0.1, x1 - 0.1, 0.25, 0.7, z, band, TRAIN)
        self.rect_on_face(x0 + 0.2, x1 - 0.2, 1.0, h - 0.3, z, glass, TRAIN)
        s = self.view.f / max(z + 4.0, 1e-3)
        ua, va = self.view.proj(o.x - 0.5, h, z + 4.0)
        ub, vb = self.view.proj(o.x + 0.5, h + 1.1, z + 4.5)
        self.line(float(ua), float(va), float(ub), float(vb), max(1.0, 0.06 * s), col * 0.4, TRAIN)
        self.line(float(ub), float(vb), float(ua) + 1.0 * s, float(va), max(1.0, 0.06 * s), col * 0.4, TRAIN)

    def _person_at(self, u0, v0, s, p, lid, seated: bool = False) -> None:
        """A standing (or seated) person as a billboard; (u0, v0) = feet, s = pixels per metre."""
        hp = p["h"]
        if hp * s < 6:  # a few pixels tall: one silhouette quad is all that would show
            self.poly(u0 + np.array([-0.13, 0.13, 0.13, -0.13]) * hp * s, v0 - np.array([0, 0, 0.97, 0.97]) * hp * s,
                      np.asarray(p["shirt"], np.float32) * 0.8, lid)
            return
        pants, shirt, skin, hair = (np.asarray(p[k], np.float32) for k in ("pants", "shirt", "skin", "hair"))
        stride = p["stride"]
        hip, shoulder = 0.5 * hp, 0.82 * hp
        tw = 0.3 * hp * p["build"]
        if not seated:
            for sgn in (-1, 1):
                fx = sgn * (0.05 * hp + stride * hp * 0.5)
                xs = u0 + np.array([sgn * 0.01 * hp, sgn * 0.1 * hp, fx + 0.05 * hp, fx - 0.05 * hp]) * s
                ys = v0 - np.array([hip, hip, 0.0, 0.0]) * s
                self.poly(xs, ys, pants, lid)
        else:
            xs = u0 + np.array([-0.12, 0.12, 0.1, -0.1]) * hp * s
            ys = v0 - np.array([hip, hip, 0.05 * hp, 0.05 * hp]) * s
            self.poly(xs, ys, pants, lid)
        lean = p.get("lean", 0.0) * hp
        xs = u0 + np.array([-tw / 2, tw / 2, tw / 2 + lean, -tw / 2 + lean]) * s
        ys = v0 - np.array([hip - 0.03 * hp, hip - 0.03 * hp, shoulder, shoulder]) * s
        self.poly(xs, ys, shirt, lid)
        for sgn in (-1, 1):  # arms
            ax = sgn * (tw / 2 + 0.03 * hp)
            xs = u0 + np.array([ax - 0.035 * hp + lean, ax + 0.035 * hp + lean,
                                ax + 0.03 * hp + sgn * p["arm"] * hp, ax - 0.03 * hp + sgn * p["arm"] * hp]) * s
            ys = v0 - np.array([shoulder, shoulder, hip - 0.02 * hp, hip - 0.02 * hp]) * s
            self.poly(xs, ys, shirt * 0.85, lid)
        hx, hy, hr = u0 + lean * s, v0 - 0.91 * hp * s, 0.065 * hp * s
        self.ellipse(hx, hy, hr * 0.85, hr, skin, lid)
        self.ellipse(hx, hy - hr * 0.35, hr * 0.9, hr * 0.7, hair, lid)
        if p.get("bag") is not None:
            bc = np.asarray(p["bag"], np.float32)
            xs = u0 + np.array([tw / 2, tw / 2 + 0.1 * hp, tw / 2 + 0.1 * hp, tw / 2]) * s
            ys = v0 - np.array([hip + 0.05 * hp, hip + 0.05 * hp, hip - 0.15 * hp, hip - 0.15 * hp]) * s
            self.poly(xs, ys, bc, lid)

    def _person(self, o: Obj, z: float) -> None:
        u, v = self.view.proj(o.x, 0.0, z)
        self._person_at(float(u), float(v), self.view.f / z, o.p, PERSON)

    def _rider(self, o: Obj, z: float) -> None:
        """Cyclist or motorcyclist seen from behind/front on the road."""
        p = o.p
        u, v = self.view.proj(o.x, 0.0, z)
        u, v, s = float(u), float(v), self.view.f / z
        dark = np.array([25, 25, 28], np.float32)
        if p["motor"]:
            self.poly(u + np.array([-0.08, 0.08, 0.08, -0.08]) * s, v - np.array([0, 0, 0.65, 0.65]) * s, dark, MOTORCYCLE)
            col = np.asarray(p["bike_color"], np.float32)
            self.poly(u + np.array([-0.3, 0.3, 0.26, -0.26]) * s, v - np.array([0.35, 0.35, 0.95, 0.95]) * s, col, MOTORCYCLE)
            self.poly(u + np.array([-0.38, 0.38, 0.38, -0.38]) * s, v - np.array([1.0, 1.0, 1.06, 1.06]) * s, dark, MOTORCYCLE)
        else:
            self.poly(u + np.array([-0.025, 0.025, 0.025, -0.025]) * s, v - np.array([0, 0, 0.68, 0.68]) * s, dark, BICYCLE)
            self.poly(u + np.array([-0.28, 0.28, 0.28, -0.28]) * s, v - np.array([1.02, 1.02, 1.06, 1.06]) * s,
                      np.asarray(p["bike_color"], np.float32), BICYCLE)
        # seated: hips above the saddle, legs down to the pedals on either side of the wheel
        for sgn in (-1, 1):
            xs = u + np.array([sgn * 0.04, sgn * 0.14, sgn * 0.16, sgn * 0.08]) * s
            ys = v - np.array([0.95, 0.95, 0.3, 0.3]) * s
            self.poly(xs, ys, np.asarray(p["pants"], np.float32), RIDER)
        self._person_at(u, v - 0.45 * s, s, dict(p, h=p["h"] * 0.85, stride=0.0), RIDER, seated=True)
        if p["motor"]:
            self.ellipse(u, v - (0.45 + 0.91 * 0.85 * p["h"]) * s, 0.13 * s, 0.14 * s,
                         np.asarray(p["helmet"], np.float32), RIDER)

    def _bicycle(self, o: Obj, z: float) -> None:
        """A parked bicycle in side view (two wheels, a frame)."""
        p = o.p
        u, v = self.view.proj(o.x, 0.0, z)
        u, v, s = float(u), float(v), self.view.f / z
        col = np.asarray(p["bike_color"], np.float32)
        r = 0.34 * s
        t = max(1.0, 0.05 * s)
        dark = np.array([30, 30, 32], np.float32)
        for dx in (-0.55, 0.55):
            c = (int((u + dx * s) * _ONE), int((v - 0.34 * s) * _ONE))
            cv2.circle(self.img, c, max(1, int(r * _ONE)), _c(dark), max(1, int(round(t))), cv2.LINE_8, _SHIFT)
            cv2.circle(self.ids, c, max(1, int(r * _ONE)), BICYCLE, max(1, int(round(t))), cv2.LINE_8, _SHIFT)
        pts = [(-0.55, 0.34), (-0.1, 0.34), (0.3, 0.8), (-0.2, 0.8), (-0.1, 0.34)]
        for (a, b), (c_, d) in zip(pts[:-1], pts[1:]):
            self.line(u + a * s, v - b * s, u + c_ * s, v - d * s, t, col, BICYCLE)
        self.line(u + 0.3 * s, v - 0.8 * s, u + 0.55 * s, v - 0.34 * s, t, col, BICYCLE)
        self.line(u + 0.3 * s, v - 0.8 * s, u + 0.35 * s, v - 1.0 * s, t, dark, BICYCLE)

    def _pole(self, o: Obj, z: float) -> None:
        p = o.p
        r = p["r"]
        col = np.asarray(p["color"], np.float32)
        self.box(o.x - r, o.x + r, 0.0, p["h"], z, z + 2 * r, col, POLE)
        if p.get("arm"):
            side = -np.sign(o.x) if o.x != 0 else 1.0
            u0, v0 = self.view.proj(o.x, p["h"] - 0.1, z)
            xe = o.x + side * p["arm"]
            u1, v1 = self.view.proj(xe, p["h"] + 0.15, z)
            self.line(float(u0), float(v0), float(u1), float(v1), max(1.0, 0.12 * self.view.f / z), col, POLE)
            self.box(xe - 0.3, xe + 0.3, p["h"] - 0.05, p["h"] + 0.15, z - 0.15, z + 0.15,
                     col * 0.8, POLE, near=np.array([235, 235, 200], np.float32) if p.get("lamp_on") else col * 0.7)

    def _sign(self, o: Obj, z: float) -> None:
        p = o.p
        self._pole(Obj("pole", o.x, o.z, p={"r": 0.05, "h": p["mount"] + p["size"], "color": p["pole_color"]}), z)
        u, v = self.view.proj(o.x, p["mount"] + p["size"] / 2, z - 0.08)
        s = self.view.f / z
        half = p["size"] / 2 * s
        shape, c1, c2 = p["shape"], np.asarray(p["c1"], np.float32), np.asarray(p["c2"], np.float32)
        u, v = float(u), float(v)
        if shape == "circle":
            self.ellipse(u, v, half, half, c1, SIGN)
            self.ellipse(u, v, half * 0.75, half * 0.75, c2, SIGN)
        elif shape == "triangle":
            d = 1 if p.get("down") else -1
            self.poly(u + np.array([-1, 1, 0]) * half, v + np.array([-d, -d, d]) * half * 0.9, c1, SIGN)
            self.poly(u + np.array([-0.62, 0.62, 0]) * half, v + np.array([-d * 0.62, -d * 0.62, d * 0.55]) * half, c2, SIGN)
        elif shape == "diamond":
            self.poly(u + np.array([0, 1, 0, -1]) * half, v + np.array([-1, 0, 1, 0]) * half, c1, SIGN)
            self.poly(u + np.array([0, 0.7, 0, -0.7]) * half, v + np.array([-0.7, 0, 0.7, 0]) * half, c2, SIGN)
        else:  # rectangle (direction / information sign)
            aspect = p.get("aspect", 1.5)
            self.poly(u + np.array([-aspect, aspect, aspect, -aspect]) * half, v + np.array([-1, -1, 1, 1]) * half, c1, SIGN)
            self.poly(u + np.array([-aspect, aspect, aspect, -aspect]) * half * 0.8,
                      v + np.array([-0.15, -0.15, 0.15, 0.15]) * half, c2, SIGN)

    def _light(self, o: Obj, z: float) -> None:
        p = o.p
        housing = np.asarray(p["housing"], np.float32)
        if p["overhead"]:
            self._pole(Obj("pole", o.x, o.z, p={"r": 0.1, "h": p["mount"] + 0.6, "color": p["pole_color"],
                                                 "arm": abs(o.x - p["hx"])}), z)
            x = p["hx"]
        else:
            self._pole(Obj("pole", o.x, o.z, p={"r": 0.07, "h": p["mount"], "color": p["pole_color"]}), z)
            x = o.x
        y0 = p["mount"] - 0.5 if p["overhead"] else p["mount"]
        self.box(x - 0.18, x + 0.18, y0, y0 + 0.95, z - 0.25, z, housing, LIGHT)
        if p["front"]:
            on = p["state"]
            lamps = ((255, 40, 30), (255, 180, 20), (40, 230, 90))
            for i, col in enumerate(lamps):
                u, v = self.view.proj(x, y0 + 0.78 - 0.3 * i, z - 0.26)
                s = self.view.f / z
                c = np.asarray(col, np.float32) * (1.0 if i == on else 0.25)
                self.ellipse(float(u), float(v), 0.1 * s, 0.1 * s, c, LIGHT)

    def _tree(self, o: Obj, z: float) -> None:
        p = o.p
        trunk = np.asarray(p["trunk"], np.float32)
        self.box(o.x - p["tr"], o.x + p["tr"], 0.0, p["th"] + 0.5, z, z + 2 * p["tr"], trunk, VEG)
        s = self.view.f / z
        for (dx, dy, rx, ry, cf) in p["blobs"]:
            u, v = self.view.proj(o.x + dx, p["th"] + dy, z - 0.5)
            self.ellipse(float(u), float(v), rx * s, ry * s, np.asarray(p["leaf"], np.float32) * cf, VEG)

    def _anomaly(self, o: Obj, z: float) -> None:
        """Paste a pre-rendered outlier sprite standing on the road, scaled by distance."""
        p = o.p
        s = self.view.f / z
        hpx = p["h"] * s
        wpx = hpx * p["aspect"]
        if hpx < 1.0 or wpx < 1.0:
            return
        u, v = self.view.proj(o.x, 0.0, z)
        x0, y1 = float(u) - wpx / 2, float(v) + 0.2 * p["sink"] * hpx
        x0i, y0i = int(np.floor(x0)), int(np.floor(y1 - hpx))
        wi, hi = max(1, int(round(wpx))), max(1, int(round(hpx)))
        rgb, mask = p["sprite"]
        rs = cv2.resize(rgb, (wi, hi), interpolation=cv2.INTER_AREA if wi < rgb.shape[1] else cv2.INTER_LINEAR)
        ms = cv2.resize(mask, (wi, hi), interpolation=cv2.INTER_AREA if wi < rgb.shape[1] else cv2.INTER_LINEAR)
        ya, yb, xa, xb = max(0, y0i), min(self.h, y0i + hi), max(0, x0i), min(self.w, x0i + wi)
        if ya >= yb or xa >= xb:
            return
        sub_rgb = rs[ya - y0i:yb - y0i, xa - x0i:xb - x0i]
        alpha = ms[ya - y0i:yb - y0i, xa - x0i:xb - x0i]
        img = self.img[ya:yb, xa:xb]
        img += (sub_rgb - img) * alpha[..., None]   # soft edge in colour, crisp label below
        ids = self.ids[ya:yb, xa:xb]
        ids[alpha >= 0.5] = ANOMALY_ID
