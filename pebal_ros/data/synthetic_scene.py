"""Procedural urban street scenes with pixel-exact Cityscapes labels (numpy + cv2, vectorised).

A ``Scene`` is sampled once (road layout, facades, objects, light) in road-aligned world
coordinates and can be rendered from any camera position along the road, which is what makes a
temporally coherent drive (``drive_sequence``) possible. A frame is rendered back to front:

1. sky (gradient, clouds) and a distant skyline,
2. the ground plane per pixel (road with lane markings and crosswalks, kerbs, paved sidewalks,
   terrain), with building shadows from the sun's side,
3. facade layers on each side, per column (buildings with windows and shop fronts, tree rows,
   walls, fences, hedges),
4. objects sorted far to near (cars, trucks, buses, people, cyclists, poles, signs, traffic
   lights, trees, planted anomalies), then optionally the ego vehicle's bonnet,
5. per-class texture, global light (brightness, colour temperature, contrast), optical blur and
   sensor noise.

Labels are the Cityscapes label ids of what was drawn (id 1 "ego vehicle" for the bonnet; the
internal id 254 marks planted anomalies); train ids follow through ``labels.ID_TO_TRAIN_ID``.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple, Sequence

import cv2
import numpy as np

from pebal_ros.data import synthetic_textures as tex
from pebal_ros.data.synthetic_objects import (
    ANOMALY_ID, BUILDING, EGO, FENCE, ROAD, SIDEWALK, SKY, TERRAIN, VEG, WALL, Obj, Painter, View)
from pebal_ros.data.synthetic_outliers import TEST_FAMILIES, natural_aspect, render_outlier
from pebal_ros.labels import ID_TO_TRAIN_ID, VOID_LABEL

# Facade layer kinds
K_NONE, K_BUILDING, K_VEG, K_WALL, K_FENCE = 0, 1, 2, 3, 4
_KIND_ID = np.array([0, BUILDING, VEG, WALL, FENCE], np.uint8)

# Fine-grain texture amplitude per label id (screen-space noise): distinct texture is one of the
# cues that lets a small network separate e.g. vegetation from terrain from road.
_FINE = np.zeros(256, np.float32)
_MID = np.zeros(256, np.float32)
for _id, _f, _m in ((ROAD, 0.06, 0.03), (SIDEWALK, 0.04, 0.02), (BUILDING, 0.03, 0.03),
                    (WALL, 0.05, 0.05), (FENCE, 0.04, 0.02), (VEG, 0.16, 0.22), (TERRAIN, 0.14, 0.10),
                    (SKY, 0.006, 0.0), (17, 0.02, 0.0), (26, 0.02, 0.0), (27, 0.02, 0.0), (28, 0.02, 0.0),
                    (24, 0.05, 0.02), (25, 0.05, 0.02), (20, 0.02, 0.0), (19, 0.02, 0.0),
                    (ANOMALY_ID, 0.03, 0.0), (EGO, 0.02, 0.0)):
    _FINE[_id], _MID[_id] = _f, _m

_GROUND = np.zeros(256, bool)
_GROUND[[ROAD, SIDEWALK, TERRAIN]] = True

_BUILDING_COLOURS = np.array([
    [205, 190, 165], [160, 158, 152], [150, 82, 62], [222, 220, 212], [215, 195, 130],
    [120, 125, 135], [180, 120, 90], [190, 175, 150], [110, 100, 95], [200, 160, 150]], np.float32)
_CAR_COLOURS = np.array([
    [20, 20, 22], [230, 230, 228], [150, 152, 155], [90, 92, 96], [150, 20, 20], [25, 45, 110],
    [30, 70, 40], [200, 170, 40], [200, 200, 205], [110, 60, 30], [60, 60, 62]], np.float32)


def _pick(rng: np.random.Generator, table: np.ndarray, jitter: float = 0.12) -> np.ndarray:
    return np.clip(table[rng.integers(len(table))] * rng.uniform(1 - jitter, 1 + jitter, 3), 0, 255)


def _hsv(rng: np.random.Generator, h=(0, 1), s=(0.2, 0.9), v=(0.2, 0.9)) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(rng.uniform(*h) % 1.0, rng.uniform(*s), rng.uniform(*v)), np.float32) * 255


@dataclass
class Layer:
    """A row of facades (or walls, fences, hedges) along one side of the road."""
    side: int            # -1 left, +1 right
    lateral: float       # distance of the facade plane from the road centre (m)
    edges: np.ndarray    # (n+1,) world z of block boundaries
    kind: np.ndarray     # (n,) K_*
    height: np.ndarray   # (n,) m
    color: np.ndarray    # (n, 3)
    glass: np.ndarray    # (n, 3)
    win: np.ndarray      # (n, 4) pitch_u, frac_u, pitch_v, frac_v
    light: float = 1.0   # sun factor of this side's road-facing faces


@dataclass
class Scene:
    f_ratio: float
    horizon: float
    cx_off: float
    cam_h: float
    c0: float
    k: float
    z_far: float
    road_half: float
    lane_w: float
    n_lanes: int
    two_way: bool
    center_solid: bool
    edge_lines: bool
    dash: tuple[float, float]
    marking: np.ndarray
    crosswalks: np.ndarray
    sidewalk: np.ndarray        # (2,) widths left, right
    verge_terrain: np.ndarray   # (2,) bool
    road_col: np.ndarray
    side_col: np.ndarray
    curb_col: np.ndarray
    terr_col: np.ndarray
    paver: float
    layers: list[Layer]
    sky_top: np.ndarray
    sky_hor: np.ndarray
    cloud: float
    cloud_col: np.ndarray
    skyline_h: float
    skyline_veg: float
    sun_side: int
    shadow_len: float
    shadow: float
    gain: float
    tint: float
    contrast: float
    blur: float
    noise: float
    hood: dict | None
    parking: np.ndarray = field(default_factory=lambda: np.zeros(2, bool))
    grass: np.ndarray = field(default_factory=lambda: np.zeros(2))
    objects: list[Obj] = field(default_factory=list)
    tex_seed: int = 0


# ---------------------------------------------------------------------------------- sampling
def _blocks(rng: np.random.Generator, side: int, lateral: float, z0: float, z1: float,
            front: bool, urban: float, light: float) -> Layer:
    edges, kinds, heights, cols, glass, win = [z0], [], [], [], [], []
    while edges[-1] < z1:
        u = rng.random()
        if front:
            kind = K_NONE if u < 0.45 else (K_WALL if u < 0.65 else (K_FENCE if u < 0.85 else K_VEG))
            length = rng.uniform(6, 40)
            height = {K_NONE: 0.0, K_WALL: rng.uniform(0.6, 2.5), K_FENCE: rng.uniform(0.9, 2.2),
                      K_VEG: rng.uniform(0.8, 2.0)}[kind]
        else:
            kind = K_BUILDING if u < 0.2 + 0.72 * urban else (K_VEG if u < 0.93 else K_NONE)
            length = rng.uniform(8, 40) if kind == K_BUILDING else rng.uniform(5, 30)
            height = {K_BUILDING: rng.uniform(6, 12 + 22 * urban), K_VEG: rng.uniform(4, 12),
                      K_NONE: 0.0}[kind]
        edges.append(edges[-1] + length)
        kinds.append(kind)
        heights.append(height)
        if kind == K_BUILDING:
            cols.append(_pick(rng, _BUILDING_COLOURS, 0.15))
        elif kind == K_VEG:
            cols.append(np.array([rng.uniform(35, 80), rng.uniform(70, 120), rng.uniform(20, 50)], np.float32))
        elif kind == K_WALL:
            g = rng.uniform(110, 200)
            cols.append(np.clip(g + rng.uniform(-15, 15, 3), 0, 255).astype(np.float32))
        elif kind == K_FENCE:
            cols.append(_pick(rng, np.array([[150, 110, 70], [120, 125, 120], [90, 95, 85], [180, 160, 120]],
                                            np.float32), 0.12))
        else:
            cols.append(np.zeros(3, np.float32))
        glass.append(_hsv(rng, (0.5, 0.7), (0.05, 0.4), (0.12, 0.45)))
        win.append([rng.uniform(2.4, 4.5), rng.uniform(0.35, 0.7), rng.uniform(2.9, 3.6), rng.uniform(0.4, 0.65)])
    return Layer(side, lateral, np.asarray(edges, np.float64), np.asarray(kinds, np.int64),
                 np.asarray(heights, np.float32), np.asarray(cols, np.float32),
                 np.asarray(glass, np.float32), np.asarray(win, np.float32), light)


def _person_params(rng: np.random.Generator) -> dict:
    skin = np.array([[235, 200, 170], [200, 150, 110], [150, 100, 70], [90, 60, 45]], np.float32)
    return {
        "h": rng.uniform(1.5, 1.95), "build": rng.uniform(0.85, 1.2), "stride": rng.uniform(0, 0.3),
        "arm": rng.uniform(0.0, 0.08),
        "pants": _hsv(rng, s=(0.0, 0.6), v=(0.08, 0.6)), "shirt": _hsv(rng, s=(0.0, 0.9), v=(0.1, 0.95)),
        "skin": skin[rng.integers(4)], "hair": _hsv(rng, (0.05, 0.12), (0.2, 0.7), (0.05, 0.6)),
        "bag": _hsv(rng) if rng.random() < 0.3 else None,
    }


def _vehicle(rng: np.random.Generator, x: float, z: float, v: float, rear: bool) -> Obj:
    u = rng.random()
    if u < 0.06:
        return Obj("truck", x, z, v, {"w": 2.5, "l": rng.uniform(7, 10), "h": rng.uniform(3.2, 3.9), "rear": rear,
                                      "color": _pick(rng, _CAR_COLOURS), "glass": _hsv(rng, (0.5, 0.7), (0.1, 0.3), (0.1, 0.3)),
                                      "box_color": _pick(rng, np.array([[225, 225, 222], [200, 60, 40], [60, 90, 150],
                                                                        [170, 170, 165]], np.float32))})
    if u < 0.10:
        return Obj("bus", x, z, v, {"w": 2.55, "l": rng.uniform(11, 14), "h": rng.uniform(3.0, 3.4), "rear": rear,
                                    "color": _pick(rng, np.array([[230, 200, 40], [200, 40, 40], [235, 235, 230],
                                                                  [40, 110, 170]], np.float32)),
                                    "glass": _hsv(rng, (0.5, 0.7), (0.1, 0.3), (0.1, 0.25))})
    return Obj("car", x, z, v, {"w": rng.uniform(1.65, 1.95), "l": rng.uniform(3.8, 4.9), "h": rng.uniform(1.35, 1.75),
                                "body": rng.uniform(0.55, 0.65), "rear": rear, "lit": rng.random() < 0.3,
                                "color": _pick(rng, _CAR_COLOURS, 0.1),
                                "glass": _hsv(rng, (0.5, 0.7), (0.05, 0.3), (0.08, 0.3))})


def _rider_params(rng: np.random.Generator, motor: bool) -> dict:
    p = _person_params(rng)
    p.update(motor=motor, bike_color=_hsv(rng, v=(0.1, 0.8)), helmet=_hsv(rng, v=(0.1, 0.95)))
    return p


def _tree_params(rng: np.random.Generator) -> dict:
    r = rng.uniform(1.2, 3.0)
    leaf = np.array([rng.uniform(30, 80), rng.uniform(70, 125), rng.uniform(15, 45)], np.float32)
    blobs = [(rng.uniform(-0.6, 0.6) * r, r * 0.6 + rng.uniform(-0.5, 0.6) * r, r * rng.uniform(0.5, 0.8),
              r * rng.uniform(0.45, 0.75), rng.uniform(0.7, 1.2)) for _ in range(int(rng.integers(4, 9)))]
    return {"tr": rng.uniform(0.1, 0.2), "th": rng.uniform(2.0, 3.5), "trunk": _hsv(rng, (0.05, 0.1), (0.3, 0.6), (0.15, 0.35)),
            "leaf": leaf, "blobs": blobs}


def _sign_params(rng: np.random.Generator) -> dict:
    shape = ("circle", "triangle", "diamond", "rect")[rng.integers(4)]
    red, white, blue = np.array([200, 30, 35], np.float32), np.array([235, 235, 230], np.float32), np.array([30, 70, 170], np.float32)
    yellow, green = np.array([240, 200, 30], np.float32), np.array([20, 120, 60], np.float32)
    pairs = {"circle": [(red, white), (blue, blue * 1.2), (red, blue)], "triangle": [(red, white)],
             "diamond": [(white, yellow), (yellow, yellow * 0.8)],
             "rect": [(blue, white), (green, white), (white, np.array([40, 40, 40], np.float32)), (yellow, np.array([30, 30, 30], np.float32))]}
    c1, c2 = pairs[shape][rng.integers(len(pairs[shape]))]
    back = rng.random() < 0.15  # seen from behind: a plain grey plate
    if back:
        c1 = c2 = np.array([150, 150, 150], np.float32)
    return {"shape": shape, "c1": c1, "c2": c2, "size": rng.uniform(0.6, 0.9), "mount": rng.uniform(1.9, 2.6),
            "pole_color": np.full(3, rng.uniform(110, 170), np.float32), "down": rng.random() < 0.3,
            "aspect": rng.uniform(1.0, 2.2)}


def sample_scene(rng: np.random.Generator, length: float = 0.0, cam_speed: float = 0.0,
                 duration: float = 0.0) -> Scene:
    """Draw a random street of ``length`` metres beyond the first view (0 for a single frame)."""
    urban = float(rng.beta(2.0, 1.2))
    n_lanes = int(rng.choice([2, 2, 2, 3, 4, 4]))
    lane_w = rng.uniform(2.9, 3.6)
    parking = rng.random(2) < 0.4
    # A parking strip beside the lanes keeps parked cars out of the traffic (and the camera's) lanes.
    road_half = n_lanes * lane_w / 2 + (rng.uniform(2.1, 2.5) if parking.any() else rng.uniform(0.2, 0.5))
    two_way = n_lanes != 3 and rng.random() < 0.8
    if two_way:
        lane = int(rng.integers(n_lanes // 2, n_lanes))
    else:
        lane = int(rng.integers(0, n_lanes))
    x_cam = -n_lanes * lane_w / 2 + lane_w * (lane + 0.5) + rng.normal(0, 0.25)
    z_far = rng.uniform(110, 170)
    z_end = length + z_far + 40
    sidewalk = np.where(rng.random(2) < 0.9, rng.uniform(2.5, 7.0, 2), 0.0)
    # Some streets have a lawn strip between the kerb and the footpath (terrain next to the road).
    grass = np.where((rng.random(2) < 0.3) & (sidewalk > 3.0), rng.uniform(1.0, 2.2, 2), 0.0)
    verge_terrain = rng.random(2) < (1 - urban) * 0.9 + 0.05
    verge = np.where(verge_terrain, rng.uniform(0.5, 8, 2), rng.uniform(0.0, 2.0, 2))
    sun_side = int(rng.choice([-1, 1]))
    overcast = rng.random() < 0.3
    layers = []
    for si, side in enumerate((-1, 1)):
        lit = 0.72 if side == sun_side else 1.08
        if overcast:
            lit = 0.92 if side == sun_side else 1.0
        back_lat = road_half + sidewalk[si] + verge[si]
        layers.append(_blocks(rng, side, back_lat, -40.0, z_end, False, urban, lit))
    for si, side in enumerate((-1, 1)):
        lit = 0.8 if (side == sun_side and not overcast) else 1.0
        front_lat = road_half + sidewalk[si] + rng.uniform(0.0, 0.3)
        if sidewalk[si] > 0 or verge[si] > 1:
            layers.append(_blocks(rng, side, front_lat, -40.0, z_end, True, urban, lit))

    road_g = rng.uniform(55, 115)
    road_col = np.clip(road_g + rng.uniform(-6, 6, 3) + np.array([0, 0, 4]), 0, 255).astype(np.float32)
    side_g = rng.uniform(120, 195)
    side_col = np.clip(side_g + rng.uniform(-12, 12, 3), 0, 255).astype(np.float32)
    if rng.random() < 0.25:  # red/ochre pavers
        side_col = np.clip(side_col * np.array([1.15, 0.9, 0.8]), 0, 255).astype(np.float32)
    if overcast:
        sky_top = np.full(3, rng.uniform(150, 200), np.float32) + rng.uniform(-5, 5, 3).astype(np.float32)
        sky_hor = np.clip(sky_top + rng.uniform(10, 40), 0, 255).astype(np.float32)
    else:
        sky_top = _hsv(rng, (0.55, 0.62), (0.35, 0.7), (0.6, 0.9))
        sky_hor = np.clip(sky_top * 0.4 + rng.uniform(170, 235) * 0.6, 0, 255).astype(np.float32)

    s = Scene(
        f_ratio=rng.uniform(0.85, 1.15), horizon=rng.uniform(0.36, 0.5), cx_off=rng.uniform(-0.03, 0.03),
        cam_h=rng.uniform(1.15, 1.7), c0=-x_cam, k=(rng.uniform(-1, 1) * 0.0012 if rng.random() < 0.5 else 0.0),
        z_far=z_far, road_half=road_half, lane_w=lane_w, n_lanes=n_lanes, two_way=two_way,
        center_solid=rng.random() < 0.5, edge_lines=rng.random() < 0.7,
        dash=(rng.uniform(2, 4), rng.uniform(6, 12)),
        marking=np.array([228, 228, 220], np.float32) if rng.random() < 0.8 else np.array([225, 190, 60], np.float32),
        crosswalks=np.sort(rng.uniform(5, z_end, int(rng.poisson(0.6 + length / 150)))),
        sidewalk=sidewalk, verge_terrain=verge_terrain, road_col=road_col, side_col=side_col,
        curb_col=np.clip(side_col * 1.12, 0, 255).astype(np.float32),
        terr_col=np.array([rng.uniform(80, 150), rng.uniform(110, 160), rng.uniform(45, 90)], np.float32),
        paver=rng.uniform(0.3, 0.8), layers=layers, sky_top=sky_top, sky_hor=sky_hor,
        cloud=0.0 if overcast else rng.uniform(0, 1),
        cloud_col=np.full(3, rng.uniform(215, 250), np.float32),
        skyline_h=rng.uniform(0.0, 25.0), skyline_veg=rng.uniform(0, 1),
        sun_side=sun_side, shadow_len=rng.uniform(0.3, 2.0), shadow=0.0 if overcast else rng.uniform(0.3, 0.55),
        gain=rng.uniform(0.6, 1.2), tint=rng.uniform(-1, 1), contrast=rng.uniform(0.8, 1.15),
        blur=rng.uniform(0.0, 1.1) if rng.random() < 0.7 else 0.0, noise=rng.uniform(0.5, 6.0),
        hood=({"h": rng.uniform(0.08, 0.16), "curve": rng.uniform(0.02, 0.08),
               "color": _pick(rng, _CAR_COLOURS, 0.05) * 0.6} if rng.random() < 0.4 else None),
        tex_seed=int(rng.integers(1 << 30)), parking=parking, grass=grass,
    )
    _populate(rng, s, urban, -5.0, z_end - 10, cam_speed, duration)
    return s


def _populate(rng: np.random.Generator, s: Scene, urban: float, z0: float, z1: float,
              cam_speed: float, duration: float) -> None:
    objs = s.objects
    span = z1 - z0
    rh = s.road_half
    # Moving traffic in every lane; same-direction lanes move about as fast as the camera.
    for lane in range(s.n_lanes):
        x = -s.n_lanes * s.lane_w / 2 + s.lane_w * (lane + 0.5)
        rear = not s.two_way or lane >= s.n_lanes // 2
        v = cam_speed * rng.uniform(0.6, 1.1) if rear else -cam_speed * rng.uniform(0.8, 1.2)
        if abs(x + s.c0) < s.lane_w / 2:  # the camera's lane: keep pace, never drive through them
            v = cam_speed * rng.uniform(1.0, 1.15)
        z = z0 + rng.uniform(4, 30)
        # oncoming traffic covers the stretch it drives into view
        z_stop = z1 + (abs(v) * duration if not rear else 0)
        while z < z_stop:
            if abs(x + s.c0) < s.lane_w / 2 and z < 9:   # keep the camera's own lane clear ahead
                z = 9 + rng.uniform(0, 20)
            objs.append(_vehicle(rng, x + rng.normal(0, 0.2), z, v, rear))
            z += rng.uniform(20, 90) / (0.5 + 0.8 * urban)
    # Now and then a tram (Cityscapes' "train") in an inner lane of a two-way street.
    if s.two_way and rng.random() < 0.2:
        lane = s.n_lanes // 2 - int(rng.integers(0, 2))
        x = -s.n_lanes * s.lane_w / 2 + s.lane_w * (lane + 0.5)
        rear = lane >= s.n_lanes // 2
        own = abs(x + s.c0) < s.lane_w / 2
        objs.append(Obj("tram", x, rng.uniform(z0 + 12, min(z1, z0 + 90)),
                        cam_speed * (1.05 if own else 0.7) if rear else -cam_speed * 0.7,
                        {"w": 2.4, "l": rng.uniform(22, 32), "h": rng.uniform(3.3, 3.6), "rear": rear,
                         "color": _pick(rng, np.array([[235, 235, 230], [220, 200, 40], [200, 40, 40],
                                                       [60, 120, 180]], np.float32)),
                         "band": _hsv(rng, v=(0.2, 0.8)), "glass": _hsv(rng, (0.5, 0.7), (0.1, 0.3), (0.1, 0.25))}))
    # Parked cars along the kerbs.
    for si, side in enumerate((-1, 1)):
        if s.parking[si]:
            z = z0 + rng.uniform(0, 10)
            while z < z1:
                if rng.random() < 0.6:
                    o = _vehicle(rng, side * (rh - 1.1), z, 0.0, rng.random() < 0.7)
                    objs.append(o)
                z += rng.uniform(5.2, 9.0)
    # Sidewalk life: pedestrians, parked bicycles, poles, signs, traffic lights, trees.
    for si, side in enumerate((-1, 1)):
        sw = s.sidewalk[si]
        inner = rh + 0.4
        outer = rh + max(sw, 0.8) - 0.4
        n_ped = rng.poisson(span * (0.02 + 0.12 * urban) * (sw > 0))
        for _ in range(n_ped):
            objs.append(Obj("person", side * rng.uniform(inner, max(inner, outer)), rng.uniform(z0, z1),
                            rng.choice([-1.3, 0, 1.3]) * (cam_speed > 0), _person_params(rng)))
        for _ in range(rng.poisson(span * 0.01 * urban)):
            objs.append(Obj("bicycle", side * rng.uniform(inner, max(inner, outer)), rng.uniform(z0, z1), 0.0,
                            {"bike_color": _hsv(rng, v=(0.1, 0.8))}))
        z = z0 + rng.uniform(0, 20)
        step = rng.uniform(15, 35)
        street_lights = rng.random() < 0.7
        while z < z1:
            if street_lights:
                objs.append(Obj("pole", side * (rh + 0.35), z, 0.0,
                                {"r": rng.uniform(0.08, 0.15), "h": rng.uniform(5, 9), "arm": rng.uniform(0.8, 2.5),
                                 "color": np.full(3, rng.uniform(80, 170), np.float32), "lamp_on": rng.random() < 0.2}))
            z += step * rng.uniform(0.85, 1.15)
        for _ in range(rng.poisson(span * 0.02)):
            objs.append(Obj("sign", side * (rh + rng.uniform(0.3, 1.0)), rng.uniform(z0, z1), 0.0, _sign_params(rng)))
        for _ in range(rng.poisson(span * 0.008)):
            objs.append(Obj("pole", side * rng.uniform(inner, max(inner, outer)), rng.uniform(z0, z1), 0.0,
                            {"r": rng.uniform(0.04, 0.1), "h": rng.uniform(1.0, 3.5),
                             "color": _hsv(rng, s=(0, 0.3), v=(0.2, 0.8))}))
        n_trees = rng.poisson(span * (0.05 * (1 - urban + 0.2) + 0.06 * (s.grass[si] > 0)))
        for _ in range(n_trees):
            if s.grass[si] > 0:
                lat = rh + 0.25 + s.grass[si] / 2
            else:
                lat = rh + max(sw - 0.8, 0.5) + (rng.uniform(0, 4) if s.verge_terrain[si] else 0)
            objs.append(Obj("tree", side * lat, rng.uniform(z0, z1), 0.0, _tree_params(rng)))
    # Traffic lights at junction-like spots, on poles by the kerb or hanging over the road.
    for _ in range(rng.poisson(span / 90 * (0.3 + urban))):
        zc = rng.uniform(z0 + 10, z1)
        housing = np.full(3, rng.uniform(25, 70), np.float32)
        for side in (-1, 1):
            overhead = rng.random() < 0.35
            objs.append(Obj("light", side * (rh + 0.5), zc + rng.uniform(-1, 1), 0.0,
                            {"overhead": overhead, "mount": rng.uniform(5.2, 6.0) if overhead else rng.uniform(2.4, 3.4),
                             "hx": side * rng.uniform(1.0, rh), "housing": housing, "front": side == 1 or rng.random() < 0.5,
                             "state": int(rng.integers(3)), "pole_color": np.full(3, rng.uniform(60, 150), np.float32)}))
    # Cyclists and motorcyclists near the right edge of the road.
    for _ in range(rng.poisson(span * 0.012)):
        side = 1 if s.two_way else rng.choice([-1, 1])
        x = side * (rh - rng.uniform(0.6, 1.6))
        v = cam_speed * (rng.uniform(1.0, 1.1) if abs(x + s.c0) < 1.5 else rng.uniform(0.3, 0.6))
        objs.append(Obj("rider", x, rng.uniform(z0 + 5, z1), v, _rider_params(rng, rng.random() < 0.5)))
    # Occasional pedestrians crossing the road.
    for _ in range(rng.poisson(span * 0.004 * urban)):
        objs.append(Obj("person", rng.uniform(-rh, rh), rng.uniform(z0 + 8, z1), 0.0, _person_params(rng)))


def add_anomalies(rng: np.random.Generator, scene: Scene, n: int, z_range: tuple[float, float],
                  families: Sequence[str] = TEST_FAMILIES, size_range: tuple[float, float] = (0.15, 1.6),
                  sprite_px: int = 96, f_px: float | None = None, min_px: float = 0.0,
                  clear_path: float = 0.0) -> list[Obj]:
    """Plant ``n`` anomalies of ``families`` on the road between world z in ``z_range``.

    Heights (m) are log-uniform in ``size_range``; with ``f_px`` (focal length in pixels) and
    ``min_px`` each one is placed near enough to be at least ``min_px`` pixels tall. Each gets its
    sprite once (so a drive shows the same object growing as it approaches). Traffic that would
    hide it (vehicles and people in front of it in its lane) is removed. ``clear_path`` > 0 keeps
    anomalies that far (m) to the side of the camera's path, so a drive passes beside them.
    """
    for fam in families:
        natural_aspect(rng, fam)  # validates the family name before anything is drawn
    out = []
    lanes_half = scene.n_lanes * scene.lane_w / 2
    for _ in range(n):
        fam = str(families[int(rng.integers(len(families)))])
        h_m = float(np.exp(rng.uniform(np.log(size_range[0]), np.log(size_range[1]))))
        aspect = natural_aspect(rng, fam)
        ws = max(4, int(round(sprite_px * aspect)))
        rgb, mask = render_outlier(rng, fam, (ws, sprite_px))
        z_hi = z_range[1]
        if f_px is not None and min_px > 0:
            z_hi = min(z_hi, f_px * h_m / min_px)
        z = z_range[0] + max(0.0, z_hi - z_range[0]) * rng.random() ** 1.3  # a bias to nearer objects
        x = rng.uniform(-lanes_half + 0.4, lanes_half - 0.4)
        cam_x = -scene.c0
        if clear_path > 0 and abs(x - cam_x) < clear_path:
            d = x - cam_x
            x = cam_x + np.sign(d or 1.0) * clear_path + d
            if abs(x) > scene.road_half - 0.4:  # no room on that side: pass it on the other one
                x = cam_x - np.sign(d or 1.0) * clear_path - d
        out.append(Obj("anomaly", x, z, 0.0, {"family": fam, "h": h_m, "aspect": aspect, "sink": rng.uniform(0, 0.15),
                                              "sprite": (rgb.astype(np.float32), mask.astype(np.float32))}))
    scene.objects = [ob for ob in scene.objects if not (
        ob.kind in ("car", "truck", "bus", "tram", "rider", "person", "bicycle")
        and any(abs(ob.x - a.x) < 2.4 and a.z - 16 < ob.z < a.z + 2 for a in out))] + out
    return out


# ---------------------------------------------------------------------------------- rendering
def _view(scene: Scene, w: int, h: int, cam_z: float) -> View:
    k = scene.k * np.cos(cam_z / 180.0) if scene.k else 0.0
    return View(w, h, scene.f_ratio * w, w / 2 + scene.cx_off * w, scene.horizon * h, scene.cam_h, scene.c0, k)


def _sky(img: np.ndarray, ids: np.ndarray, scene: Scene, view: View, rng_tex: np.random.Generator) -> None:
    h, w = ids.shape
    # Rows below the far end of the ground plane are all overwritten by the ground.
    hs = int(np.clip(np.ceil(view.yh + view.f * view.cam_h / scene.z_far) + 1, 1, h))
    t = np.clip((np.arange(hs, dtype=np.float32) + 0.5) / max(view.yh, 1.0), 0, 1)[:, None, None]
    sky = img[:hs]
    sky[:] = scene.sky_top * (1 - t) + scene.sky_hor * t
    ids[:hs] = SKY
    if scene.cloud > 0.05:
        sc = 200.0 / w
        n = tex.screen_noise(tex.tiles()["coarse"], hs, w, rng_tex.uniform(0, 256), rng_tex.uniform(0, 256), sc, sc * 2)
        cm = np.clip((n - (1.2 - scene.cloud * 1.4)) * 0.9, 0, 1) * (1 - 0.5 * t[..., 0])
        sky += (scene.cloud_col - sky) * cm[..., None]


def _skyline(img: np.ndarray, ids: np.ndarray, scene: Scene, view: View, cam_z: float) -> None:
    """Distant buildings / tree lines closing the view at z_far."""
    if scene.skyline_h < 2:
        return
    h, w = ids.shape
    z = scene.z_far
    cols = np.arange(w, dtype=np.float32)
    xw = (cols - view.cx) * z / view.f  # lateral metres at the far plane
    tiles = tex.tiles()
    # Buildings: a step profile over blocks of ~15 m; tree lines: a smooth one.
    xq = np.floor(xw / 15.0)
    nb = tex.sample(tiles["fine"], xq * 3 + scene.tex_seed % 256, np.float32(17))
    nv = tex.sample(tiles["mid"], xw * 2.0 + scene.tex_seed % 97, np.float32(40))
    veg = tex.sample(tiles["coarse"], xq * 4 + 91, np.float32(40)) < (scene.skyline_veg * 2 - 1)
    hm = np.where(veg, scene.skyline_h * 0.4 * (1 + 0.3 * nv), scene.skyline_h * np.clip(0.6 + 0.35 * nb, 0.1, 1.5))
    top = view.yh - view.f * (hm - view.cam_h) / z
    bottom = view.yh + view.f * view.cam_h / z + 1
    rows = np.arange(h, dtype=np.float32)[:, None] + 0.5
    m = (rows >= top[None, :]) & (rows < bottom)
    lid = np.where(veg, VEG, BUILDING).astype(np.uint8)
    haze = scene.sky_hor * 0.55
    col = np.where(veg[:, None], np.array([55, 85, 45], np.float32) * 0.6 + haze * 0.4, np.array([140, 138, 135], np.float32) * 0.55 + haze * 0.45)
    ids[m] = np.broadcast_to(lid[None, :], m.shape)[m]
    img[m] = np.broadcast_to(col[None, :, :], (h, w, 3))[m]


def _layer_height_at(layer: Layer, zw: np.ndarray) -> np.ndarray:
    i = np.clip(np.searchsorted(layer.edges, zw, side="right") - 1, 0, len(layer.kind) - 1)
    hgt = layer.height[i]
    return np.where(layer.kind[i] == K_VEG, hgt * 0.6, np.where(layer.kind[i] == K_NONE, 0.0, hgt))


def _ground(img, ids, shade, scene: Scene, view: View, cam_z: float) -> None:
    h, w = ids.shape
    dz_min = view.f * view.cam_h / scene.z_far
    g0 = int(np.ceil(view.yh + dz_min))
    if g0 >= h:
        return
    g0 = max(g0, 0)
    r = np.arange(g0, h, dtype=np.float32)[:, None] + 0.5
    Z = (view.f * view.cam_h) / (r - view.yh)                      # (Hg, 1)
    X = (np.arange(w, dtype=np.float32)[None, :] + 0.5 - view.cx) * (Z / view.f) - view.center(Z)
    Zw = Z + cam_z
    aX = np.abs(X)
    right = X > 0
    rh = scene.road_half
    sw = np.where(right, scene.sidewalk[1], scene.sidewalk[0])
    vt = np.where(right, scene.verge_terrain[1], scene.verge_terrain[0])
    road = aX < rh
    side = ~road & (aX < rh + sw)
    gs = np.where(right, scene.grass[1], scene.grass[0])
    lawn = side & (aX >= rh + 0.25) & (aX < rh + 0.25 + gs)
    lid = np.where(road, ROAD, np.where((side & ~lawn) | (~side & ~vt), SIDEWALK, TERRAIN)).astype(np.uint8)
    tiles = tex.tiles()
    patches = tex.sample(tiles["coarse"], X * 12 + 37, Zw * 6)
    is_road = road
    is_side = lid == SIDEWALK
    is_terr = lid == TERRAIN
    # Materials: 0 road, 1 sidewalk, 2 grass, 3 dry grass, 4 kerb, 5 marking; one colour gather at the end.
    mat = np.where(is_road, 0, np.where(is_side, 1, np.where(patches > 0.6, 3, 2))).astype(np.uint8)
    fac = 1 + patches * np.where(is_road, 0.08, np.where(is_side, 0.05, 0.16)).astype(np.float32)
    if is_terr.any():
        grain = tex.sample(tiles["mid"], X * 25, Zw * 25)
        fac += np.where(is_terr, 0.06 * grain, 0)
    curb = ~road & (aX < rh + 0.25) & (sw > 0)
    mat[curb] = 4
    # Paver joints, faded where they would be sub-pixel (avoids moire).
    fade = np.clip(scene.paver * (view.f / Z) / 6 - 0.5, 0, 1)
    joints = (((Zw / scene.paver) % 1.0 < 0.08) | ((aX / scene.paver) % 1.0 < 0.08)) & is_side & ~curb
    fac *= 1 - 0.25 * joints * fade
    # Lane markings (labelled road, as in Cityscapes).
    lw = 0.075
    t = (X + scene.n_lanes * scene.lane_w / 2) / scene.lane_w
    ti = np.rint(t)
    d = np.abs(t - ti) * scene.lane_w
    interior = (ti >= 1) & (ti <= scene.n_lanes - 1) & (d < lw)
    dashed = (Zw % scene.dash[1]) < scene.dash[0]
    centre = scene.two_way and scene.n_lanes % 2 == 0
    if centre and scene.center_solid:
        dashed = dashed | (ti == scene.n_lanes // 2)
    mark = interior & dashed
    if scene.edge_lines:
        mark |= np.abs(aX - (scene.n_lanes * scene.lane_w / 2 + 0.1)) < lw
    for zc in scene.crosswalks:
        if cam_z < zc + 4 and zc < cam_z + scene.z_far:
            mark |= (Zw > zc) & (Zw < zc + 4.0) & ((X % 1.1) < 0.55)
    mark &= road
    mat[mark] = 5
    fac = np.where(mark, np.clip(0.8 + 0.2 * patches, 0.5, 1.0), fac)
    # Building shadows from the sun's side reach a band of the ground whose width follows the
    # height of the facade they come from.
    if scene.shadow > 0 and len(scene.layers) >= 2:  # layers[0], [1]: the back rows, left and right
        back = scene.layers[0 if scene.sun_side < 0 else 1]
        hb = _layer_height_at(back, Zw[:, 0])[:, None]
        in_sh = (scene.sun_side * X) > (back.lateral - hb * scene.shadow_len)
        shade[g0:] = np.where(in_sh, np.float32(1 - scene.shadow), np.float32(1.0))
    lut = np.stack([scene.road_col, scene.side_col, scene.terr_col, scene.terr_col * np.array([1.15, 0.95, 0.85], np.float32),
                    scene.curb_col, scene.marking]).astype(np.float32)
    np.multiply(lut[mat], fac[..., None], out=img[g0:])
    ids[g0:] = lid


def _layer(img, ids, shade, scene: Scene, layer: Layer, view: View, cam_z: float) -> None:
    h, w = ids.shape
    side = layer.side
    z_far = scene.z_far
    zs = np.geomspace(0.5, z_far, 384)
    xs = view.cx + view.f * (side * layer.lateral + view.center(zs)) / zs
    dx = np.diff(xs)
    sgn = np.sign(dx[0]) if dx[0] != 0 else 1.0
    bad = np.nonzero(np.sign(dx) != sgn)[0]
    if len(bad):  # keep the monotone (visible, nearest) part of a facade on a curving road
        zs, xs = zs[:bad[0] + 1], xs[:bad[0] + 1]
    if sgn < 0:
        zs, xs = zs[::-1], xs[::-1]
    c_lo = max(0, int(np.floor(xs[0])))
    c_hi = min(w, int(np.ceil(xs[-1])) + 1)
    if c_hi <= c_lo:
        return
    cols = np.arange(c_lo, c_hi, dtype=np.float64) + 0.5
    Zc = np.interp(cols, xs, zs)
    Zw = Zc + cam_z
    bi = np.clip(np.searchsorted(layer.edges, Zw, side="right") - 1, 0, len(layer.kind) - 1)
    kind = layer.kind[bi]
    hb = layer.height[bi].astype(np.float64)
    tiles = tex.tiles()
    if np.any(kind == K_VEG):  # ragged crowns of tree rows and hedges
        crown = tex.sample(tiles["coarse"], Zw * 14 + 11, np.float32(layer.side * 50 + 3))
        jag = tex.sample(tiles["mid"], Zw * 8 + 5, np.float32(layer.side * 30 + 9))
        hb = np.where(kind == K_VEG, hb + np.maximum(hb * 0.3, 0.4) * (crown + 0.25 * jag), hb)
    y_ground = view.yh + view.f * view.cam_h / Zc
    y_top = view.yh - view.f * (hb - view.cam_h) / Zc
    r0 = max(0, int(np.floor(y_top[kind > 0].min()))) if np.any(kind > 0) else h
    r1 = min(h, int(np.ceil(y_ground.max())) + 1)
    if r0 >= r1:
        return
    rows = np.arange(r0, r1, dtype=np.float64)[:, None] + 0.5
    m = (rows >= y_top[None, :]) & (rows < y_ground[None, :]) & (kind[None, :] > 0)
    if not m.any():
        return
    vv = (view.cam_h + (view.yh - rows) * (Zc / view.f)[None, :]).astype(np.float32)  # height (m)
    uu = (Zw - layer.edges[bi]).astype(np.float32)[None, :]                             # along block (m)
    k2 = kind[None, :]
    # One scalar brightness factor per pixel plus a window mask; colour is gathered once at the end.
    fac = np.full(m.shape, layer.light, np.float32)
    win = None
    bld = kind == K_BUILDING
    if bld.any():
        pu, fu, pv, fv = (layer.win[bi, i][None, :] for i in range(4))
        wu = (uu % pu) / pu
        wv = (vv % pv) / pv
        hb32 = hb.astype(np.float32)[None, :]
        win = (k2 == K_BUILDING) & (np.abs(wu - 0.5) < fu / 2) & (wv > 0.3) & (wv < 0.3 + fv) \
            & (vv > 3.6) & (vv < hb32 - 0.9)
        cell = tex.sample(tiles["fine"], np.floor(uu / pu) * 7 + bi[None, :] * 13, np.floor(vv / pv) * 5)
        fac *= np.where(win, 1 + 0.25 * cell, np.where(vv < 3.3, 0.7, np.where(vv > hb32 - 0.5, 1.15, 1.0)))
    if (kind == K_WALL).any():  # horizontal joints
        fac *= np.where((k2 == K_WALL) & (((vv * 2.2) % 1.0) < 0.07), 0.8, 1.0)
    if (kind == K_FENCE).any():  # posts and alternating planks
        fen = np.where((uu % 2.4) < 0.12, 0.65, np.where(((uu * 7) % 1.0) < 0.5, 1.0, 0.82))
        fac *= np.where(k2 == K_FENCE, fen, 1.0)
    sub_img = img[r0:r1, c_lo:c_hi]
    sub_ids = ids[r0:r1, c_lo:c_hi]
    rr, cc = np.nonzero(m)
    colour = layer.color[bi[cc]]
    if win is not None:
        wm = win[rr, cc]
        colour[wm] = layer.glass[bi[cc[wm]]]
    sub_img[rr, cc] = colour * fac[rr, cc][:, None]
    sub_ids[rr, cc] = _KIND_ID[kind[cc]]
    shade[r0:r1, c_lo:c_hi][rr, cc] = 1.0


def _hood(img, ids, scene: Scene, view: View) -> None:
    h, w = ids.shape
    hd = scene.hood
    assert hd is not None
    top = int(h * (1 - hd["h"]))
    rows = np.arange(top, h, dtype=np.float32)[:, None] + 0.5
    x = (np.arange(w, dtype=np.float32)[None, :] + 0.5 - w / 2) / (w / 2)
    edge = h * (1 - hd["h"]) + hd["curve"] * h * x * x
    m = rows >= edge
    grad = (0.7 + 0.6 * (rows - edge) / max(1.0, h * hd["h"]))  # glossy reflection near the edge
    col = hd["color"] * np.clip(1.3 - grad, 0.4, 1.3)[..., None] + scene.sky_hor * 0.15
    img[top:][m] = col[m]
    ids[top:][m] = EGO


_EXTENT = {"car": 1.2, "truck": 1.5, "bus": 1.5, "tram": 1.5, "person": 0.6, "rider": 0.6, "bicycle": 1.0, "pole": 3.0,
           "sign": 1.5, "light": 8.0, "tree": 4.0, "anomaly": 1.5}
_HEIGHT = {"car": 1.4, "truck": 3.0, "bus": 3.0, "tram": 3.0, "person": 1.6, "rider": 1.6, "bicycle": 1.0, "pole": 4.0,
           "sign": 2.5, "light": 3.0, "tree": 5.0, "anomaly": 0.1}


def _on_screen(o: Obj, z: float, view: View) -> bool:
    """Cheap cull: skip objects entirely beside the frame or under ~1.5 px tall."""
    s = view.f / z
    if o.p.get("h", _HEIGHT[o.kind]) * s < 1.5:
        return False
    length = o.p.get("l", 0.5)
    zf = z + length
    xc = o.x + view.c0
    u_near = view.cx + (xc + view.k * z * z) * s
    u_far = view.cx + (xc + view.k * zf * zf) * view.f / zf
    m = _EXTENT[o.kind] * s
    return not (max(u_near, u_far) + m < 0 or min(u_near, u_far) - m > view.width)


def render(scene: Scene, size: tuple[int, int], cam_z: float = 0.0, t: float = 0.0,
           rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render ``scene`` seen from ``cam_z`` at time ``t``: (RGB uint8 HxWx3, Cityscapes label ids uint8 HxW).

    ``rng`` draws only the sensor noise (a fresh one per frame keeps a drive's noise independent).
    """
    w, h = size
    view = _view(scene, w, h, cam_z)
    rng = rng if rng is not None else np.random.default_rng(scene.tex_seed)
    rng_tex = np.random.default_rng(scene.tex_seed)  # static texture offsets: the same every frame
    img = np.empty((h, w, 3), np.float32)
    ids = np.empty((h, w), np.uint8)
    shade = np.ones((h, w), np.float32)
    _sky(img, ids, scene, view, rng_tex)
    _skyline(img, ids, scene, view, cam_z)
    _ground(img, ids, shade, scene, view, cam_z)
    for layer in scene.layers:
        _layer(img, ids, shade, scene, layer, view, cam_z)
    occ = np.ones((h, w), np.float32)
    painter = Painter(img, ids, occ, view)
    visible = []
    for o in scene.objects:
        z = o.z + o.v * t - cam_z
        if 1.2 < z < scene.z_far and _on_screen(o, z, view):
            visible.append((z, o))
    visible.sort(key=lambda zo: -zo[0])
    # Contact shadows go on their own map, lighter ones first so that overlapping ellipses keep the
    # darker value whatever the object order; they darken only the ground, before objects are drawn.
    shadows = []
    for z, o in visible:
        if o.kind in ("car", "truck", "bus", "tram"):
            shadows.append((0.55, o.x, z + o.p["l"] / 2, o.p["w"] / 2 + 0.15, o.p["l"] / 2 + 0.2))
        elif o.kind in ("person", "rider", "anomaly"):
            r = o.p["h"] * (0.2 if o.kind != "anomaly" else 0.45 * o.p["aspect"])
            shadows.append((0.4, o.x, z, r, r * 0.8))
    if shadows:
        shadows.sort(key=lambda sh: sh[0])
        for strength, x, zc, hw, hl in shadows:
            painter.contact_shadow(x, zc, hw, hl, strength)
        shade *= np.where(_GROUND[ids], occ, np.float32(1))
    img *= shade[..., None]
    for z, o in visible:
        painter.draw(o, z)
    if scene.hood is not None:
        _hood(img, ids, scene, view)
    _finish(img, ids, scene, rng, rng_tex)
    out = np.empty((h, w, 3), np.uint8)
    np.clip(img, 0, 255, out=img)
    out[:] = img
    return out, ids


def _finish(img: np.ndarray, ids: np.ndarray, scene: Scene, rng: np.random.Generator,
            rng_tex: np.random.Generator) -> None:
    h, w = ids.shape
    tiles = tex.tiles()
    fine = tex.screen_noise(tiles["fine"], h, w, rng_tex.integers(256), rng_tex.integers(256))
    mid = tex.screen_noise(tiles["mid"], h, w, rng_tex.integers(256), rng_tex.integers(256), 0.7, 0.7)
    mod = 1 + _FINE[ids] * fine + _MID[ids] * mid
    # Light (brightness, colour temperature) and contrast around the frame mean, in one affine map.
    t = scene.tint * 0.1
    gains = np.array([scene.gain * (1 + t), scene.gain, scene.gain * (1 - t)], np.float32)
    c = np.float32(scene.contrast)
    mean = np.float32(img.mean())
    img *= mod[..., None] * (gains * c)
    img += mean * (1 - c) * gains
    if scene.blur > 0.3:
        cv2.GaussianBlur(img, (0, 0), scene.blur, dst=img)
    # Sensor noise: mostly luminance, a little per-channel (chroma) noise.
    img += (rng.standard_normal((h, w), dtype=np.float32) * np.float32(scene.noise))[..., None]


# ---------------------------------------------------------------------------------- public API
def _check_size(size) -> tuple[int, int]:
    try:
        w, h = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (width, height), got {size!r}") from None
    if w < 16 or h < 16:
        raise ValueError(f"frame size must be at least 16x16, got {w}x{h}")
    return w, h


def render_scene_ids(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One random inlier street scene: (RGB uint8 HxWx3, Cityscapes label ids uint8 HxW)."""
    scene = sample_scene(rng)
    return render(scene, _check_size(size), rng=rng)


def render_scene(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One random inlier street scene at ``size`` = (width, height): (RGB uint8, train ids uint8).

    Train ids are 0-18, or 255 where Cityscapes does not evaluate (the ego vehicle's bonnet).
    """
    img, ids = render_scene_ids(rng, size)
    return img, ID_TO_TRAIN_ID[ids]


def anomaly_label(ids: np.ndarray) -> np.ndarray:
    """Fishyscapes-style label from label ids: 1 anomaly, 255 void (not an evaluated class), 0 inlier."""
    train = ID_TO_TRAIN_ID[ids]
    lab = np.where(train == VOID_LABEL, np.uint8(255), np.uint8(0))
    lab[ids == ANOMALY_ID] = 1
    return lab


def render_anomaly_frame_ids(rng: np.random.Generator, size: tuple[int, int],
                             families: Sequence[str] = TEST_FAMILIES, max_anomalies: int = 3,
                             min_pixels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A street scene with 1-``max_anomalies`` anomalies: (RGB uint8, label ids with 254 = anomaly).

    Anomalies are at least ~4 px tall; a draw in which street furniture hides them (fewer than
    ``min_pixels`` visible) is redrawn, and the last try clears everything but the anomalies.
    """
    w, h = _check_size(size)
    min_pixels = min_pixels if min_pixels is not None else max(6, (w * h) // 8000)
    attempts = 6
    for attempt in range(attempts):
        scene = sample_scene(rng)
        n = int(rng.integers(1, max_anomalies + 1))
        add_anomalies(rng, scene, n, (4.0, 45.0), families, size_range=(0.25, 1.8),
                      f_px=scene.f_ratio * w, min_px=4.0)
        if attempt == attempts - 1:
            scene.objects = [o for o in scene.objects if o.kind == "anomaly"]
        img, ids = render(scene, (w, h), rng=rng)
        if int(np.count_nonzero(ids == ANOMALY_ID)) >= min_pixels:
            break
    return img, ids


def render_anomaly_frame(rng: np.random.Generator, size: tuple[int, int],
                         families: Sequence[str] = TEST_FAMILIES) -> tuple[np.ndarray, np.ndarray]:
    """A street scene with 1-3 anomalies of ``families`` on the road: (RGB uint8, label uint8).

    Label: 0 inlier, 1 anomaly, 255 void (ego-vehicle bonnet), as Fishyscapes labels are.
    """
    img, ids = render_anomaly_frame_ids(rng, size, families)
    return img, anomaly_label(ids)


class DriveFrame(NamedTuple):
    image: np.ndarray      # RGB uint8 HxWx3
    label: np.ndarray      # 0 inlier / 1 anomaly / 255 void
    train_ids: np.ndarray  # Cityscapes train ids (anomaly pixels are 255)
    frame_index: int
    time: float            # seconds since the start


def drive_sequence(seed: int, n_frames: int, size: tuple[int, int], fps: float = 10.0,
                   speed: float = 8.0, families: Sequence[str] = TEST_FAMILIES,
                   anomaly_every: float = 45.0) -> Iterator[DriveFrame]:
    """A forward drive along one street: objects persist, traffic moves, anomalies grow as they near.

    Anomalies of ``families`` lie on the road every ``anomaly_every`` metres on average (the first
    one is in view from the start). Deterministic in ``seed``.
    """
    if n_frames < 0:
        raise ValueError("n_frames must be >= 0")
    if fps <= 0 or speed < 0:
        raise ValueError("fps must be > 0 and speed >= 0")
    w, h = _check_size(size)
    rng = np.random.default_rng(seed)
    duration = n_frames / fps
    travel = speed * duration
    scene = sample_scene(rng, length=travel, cam_speed=speed, duration=duration)
    scene.hood = None if rng.random() < 0.5 else scene.hood
    n = max(1, int(np.ceil((travel + 40) / anomaly_every)))
    add_anomalies(rng, scene, n, (15.0, travel + 55.0), families, size_range=(0.4, 1.5), clear_path=1.4)
    for i in range(n_frames):
        t = i / fps
        img, ids = render(scene, (w, h), cam_z=speed * t, t=t, rng=np.random.default_rng([seed, i]))
        yield DriveFrame(img, anomaly_label(ids), ID_TO_TRAIN_ID[ids], i, t)
