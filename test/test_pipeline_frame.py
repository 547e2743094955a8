"""FramePipeline end to end with real rosbags message classes, CDR round trips and a real torch runtime."""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore
from scipy import ndimage

from pebal_ros.config import InferenceConfig
from pebal_ros.labels import PALETTE
from pebal_ros.pipeline.convert import (
    CorruptCompressedImageError,
    ImageLayoutError,
    UnsupportedEncodingError,
    encode_compressed,
    float_image_from_msg,
    image_view,
)
from pebal_ros.pipeline.frame import FramePipeline, PipelineConfig, RuntimeOutputError
from pebal_ros.pipeline.messages import (
    MSG_DEFINITIONS,
    OUTPUT_NAMES,
    OUTPUT_TYPES,
    REGION_TYPE,
    STATUS_TYPE,
    MessageFactory,
    StatusFields,
    register_pebal_types,
)
from pebal_ros.pipeline.regions import Region, find_regions
from pebal_ros.pipeline.visualize import ANOMALY_COLOR, colorize, overlay, score_heatmap
from pebal_ros.runtime.base import FrameOutputs
from test_pipeline_runtime import ANOMALY_RGB, PaletteRuntime, make_scene, reference_semantic

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["humble", "jazzy"])
def factory(request):
    store = get_typestore(Stores.ROS2_HUMBLE if request.param == "humble" else Stores.ROS2_JAZZY)
    return MessageFactory.for_rosbags(store)


def cdr(factory, msg, typename):
    ts = factory.typestore
    return ts.deserialize_cdr(ts.serialize_cdr(msg, typename), typename)


def image_msg(factory, rgb, encoding="rgb8", frame="cam_front", sec=100, nsec=7):
    arr = rgb if encoding == "rgb8" else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    msg = factory.image(factory.header(sec, nsec, frame), arr, encoding)
    return cdr(factory, msg, "sensor_msgs/msg/Image")


# --- messages ------------------------------------------------------------------------------

def test_embedded_definitions_equal_msg_files():
    for name, text in MSG_DEFINITIONS.items():
        assert (REPO / "msg" / f"{name.rsplit('/', 1)[1]}.msg").read_text() == text


def test_status_message_cdr_round_trip(factory):
    regions = [Region(3, 4, 10, 6, 41, 7.5, 6.25, -1.5, 2.0), Region(0, 0, 1, 1, 1, 0.0, 0.0, 0.5, 0.5)]
    s = StatusFields(640, 480, -10.0, 0.0125, 3.5, -9.25, 12.5, 30.25, regions)
    msg = factory.status(factory.header(5, 6, "cam"), s)
    back = cdr(factory, msg, STATUS_TYPE)
    assert back.header.stamp.sec == 5 and back.header.stamp.nanosec == 6 and back.header.frame_id == "cam"
    assert (back.image_width, back.image_height) == (640, 480)
    assert back.threshold == -10.0 and back.anomaly_fraction == pytest.approx(0.0125)
    assert back.inference_latency_ms == 12.5 and back.end_to_end_latency_ms == 30.25
    assert [(r.x_offset, r.y_offset, r.width, r.height, r.area) for r in back.regions] == [(3, 4, 10, 6, 41), (0, 0, 1, 1, 1)]
    assert back.regions[0].centroid_y == 6.25 and back.regions[0].mean_score == -1.5


def test_register_is_idempotent_and_types_are_complete():
    ts = get_typestore(Stores.ROS2_JAZZY)
    register_pebal_types(ts)
    register_pebal_types(ts)
    assert STATUS_TYPE in ts.types and REGION_TYPE in ts.types
    fields = [f for f in ts.types[STATUS_TYPE].__dataclass_fields__ if not f.startswith("__")]
    assert fields[:2] == ["header", "image_width"] and fields[-1] == "regions"


def test_factory_requires_types():
    with pytest.raises(ValueError, match="lacks type"):
        MessageFactory({}, lambda a: a, "nothing")


def test_factory_copies_data(factory):
    arr = np.zeros((2, 3), np.uint8)
    msg = factory.image(factory.header(), arr, "mono8")
    arr[:] = 7   # the caller may reuse its buffer
    assert not msg.data.any()


# --- regions / visualize -------------------------------------------------------------------

def test_find_regions_matches_scipy():
    rng = np.random.default_rng(3)
    mask = (ndimage.gaussian_filter(rng.normal(size=(60, 80)), 2) > 0.15).astype(np.uint8)
    score = rng.normal(size=mask.shape).astype(np.float32)
    regions = find_regions(mask, score, min_area=5)
    lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
    expect = []
    for i in range(1, n + 1):
        ys, xs = np.nonzero(lab == i)
        if ys.size >= 5:
            expect.append((ys.size, xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1,
                           score[lab == i].mean(), score[lab == i].max(), xs.mean(), ys.mean()))
    expect.sort(key=lambda e: -e[0])
    assert len(regions) == len(expect) > 3
    for r, e in zip(regions, expect):
        assert (r.area, r.x_offset, r.y_offset, r.width, r.height) == e[:5]
        assert r.mean_score == pytest.approx(e[5], rel=1e-5) and r.max_score == pytest.approx(e[6])
        assert (r.centroid_x, r.centroid_y) == pytest.approx(e[7:9])
    assert len(find_regions(mask, score, min_area=5, max_regions=2)) == 2
    assert find_regions(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.float32)) == []


def test_region_scaling():
    r = Region(10, 20, 5, 4, 12, 12.0, 21.5, 0.0, 1.0).scaled(2.0, 2.0)
    assert (r.x_offset, r.y_offset, r.width, r.height, r.area) == (20, 40, 10, 8, 48)
    assert (r.centroid_x, r.centroid_y) == (24.5, 43.5)


def test_colorize_and_overlay():
    sem = np.array([[0, 13], [10, 18]], np.uint8)
    rgb = colorize(sem)
    for (y, x), t in np.ndenumerate(sem):
        assert tuple(rgb[y, x]) == tuple(PALETTE[t])
    img = np.full((2, 2, 3), 100, np.uint8)
    mask = np.array([[0, 1], [0, 0]], np.uint8)
    ov = overlay(img, rgb, mask, alpha=0.5)
    # (1, 0) touches the anomaly only diagonally: plain blend; (0, 0) and (1, 1) are its outline.
    assert tuple(ov[1, 0]) == tuple(((img[1, 0].astype(int) + PALETTE[10]) / 2 + 1e-9).round().astype(np.uint8))
    expect = 0.35 * 100 + 0.65 * np.array(ANOMALY_COLOR)
    assert np.abs(ov[0, 1] - expect).max() <= 1.0, ov[0, 1]
    assert tuple(ov[0, 0]) == tuple(ov[1, 1]) == ANOMALY_COLOR
    heat = score_heatmap(np.array([[0.0, 1.0]], np.float32), 0.5, 0.5, outline=False)
    assert heat.shape == (1, 2, 3) and heat[0, 0, 2] > heat[0, 0, 0] and heat[0, 1, 0] > heat[0, 1, 2]


# --- the pipeline --------------------------------------------------------------------------

def test_before_inference_called_once_after_preprocessing(factory):
    """process(before_inference=f): f runs once per frame, after decoding and resizing and before
    the runtime call (replay hands the previous frame's messages to its writer there); a frame
    refused while decoding never gets that far."""
    rt = PaletteRuntime(input_size=(24, 48))
    pipe = FramePipeline(rt, PipelineConfig(threshold=0.0), factory)
    seen: list[tuple[int, tuple[int, ...]]] = []
    good = image_msg(factory, make_scene(48, 96, blob=(20, 30, 10, 16)))
    res = pipe.process(good, before_inference=lambda: seen.append((rt.calls, pipe._input_buf.shape)))
    assert seen == [(0, (24, 48, 3))] and rt.calls == 1
    np.testing.assert_array_equal(res.outputs.semantic, pipe.process(good).outputs.semantic)
    bad = factory.image(factory.header(), np.zeros((4, 6), np.uint8), "mono8")
    bad.encoding = "32FC1"
    with pytest.raises(UnsupportedEncodingError):
        pipe.process(bad, before_inference=lambda: seen.append((-1, ())))
    assert len(seen) == 1 and rt.calls == 2


def test_process_all_outputs_camera_resolution(factory):
    rt = PaletteRuntime(input_size=(24, 48))
    pipe = FramePipeline(rt, PipelineConfig(threshold=0.0, min_region_area=20), factory)
    scene = make_scene(48, 96, blob=(20, 30, 10, 16))
    res = pipe.process(image_msg(factory, scene, "bgr8"))
    assert set(res.messages) == set(OUTPUT_NAMES)
    assert res.camera_size == (48, 96)
    for name, msg in res.messages.items():
        back = cdr(factory, msg, OUTPUT_TYPES[name])
        assert back.header.frame_id == "cam_front" and back.header.stamp.sec == 100 and back.header.stamp.nanosec == 7
        if name != "status":
            assert (back.height, back.width) == (48, 96), name
    m = res.messages
    assert m["semantic"].encoding == "mono8" and m["semantic_color"].encoding == "rgb8"
    assert m["anomaly_score"].encoding == "32FC1" and m["anomaly_mask"].encoding == "mono8"
    assert m["overlay"].encoding == "rgb8"
    sem, _ = image_view(m["semantic"])
    # Network at half size, nearest upsampling: compare with the reference labelling on the same grid.
    small = cv2.resize(scene, (48, 24), interpolation=cv2.INTER_LINEAR)
    ref = cv2.resize(reference_semantic(small), (96, 48), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(sem, ref)
    mask, _ = image_view(m["anomaly_mask"])
    assert set(np.unique(mask)) == {0, 255}
    score = float_image_from_msg(m["anomaly_score"])
    np.testing.assert_array_equal(mask == 255, score > 0.0)
    st = res.status
    assert len(st.regions) == 1
    r = st.regions[0]
    assert abs(r.x_offset - 30) <= 2 and abs(r.y_offset - 20) <= 2 and abs(r.width - 16) <= 3 and abs(r.height - 10) <= 3
    # status statistics describe the network-resolution outputs
    assert st.anomaly_fraction == pytest.approx((mask == 255).mean(), abs=0.01)
    assert st.max_score == pytest.approx(res_net_max(rt, scene), rel=1e-5) and r.max_score <= st.max_score
    assert score.max() <= st.max_score + 1e-5      # bilinear upsampling never exceeds the peak
    assert 0 < st.inference_latency_ms <= st.end_to_end_latency_ms
    assert {"decode", "preprocess", "inference", "postprocess", "encode", "total", "end_to_end"} <= set(res.timings)
    ov, _ = image_view(m["overlay"])
    assert ov[25, 38, 1] > 150 and ov[25, 38, 0] < 100   # green anomaly tint over the blob


def res_net_max(rt, scene):
    small = cv2.resize(scene, (rt.input_size[1], rt.input_size[0]), interpolation=cv2.INTER_LINEAR)
    return float(rt.infer(small, 0.0).score.max())


def test_network_resolution_and_requested_outputs_only(factory):
    rt = PaletteRuntime(input_size=(24, 48))
    pipe = FramePipeline(rt, PipelineConfig(threshold=0.0, output_resolution="network", min_region_area=20), factory)
    scene = make_scene(48, 96)
    res = pipe.process(image_msg(factory, scene), outputs=["anomaly_mask", "status"])
    assert set(res.messages) == {"anomaly_mask", "status"}
    assert (res.messages["anomaly_mask"].height, res.messages["anomaly_mask"].width) == (24, 48)
    # Regions are reported in camera pixels even when the outputs are at network size.
    r = res.status.regions[0]
    assert abs(r.x_offset - 30) <= 2 and abs(r.width - 16) <= 4 and res.status.image_width == 96
    assert pipe.process(image_msg(factory, scene), outputs=[]).messages == {}
    with pytest.raises(ValueError, match="unknown output"):
        pipe.process(image_msg(factory, scene), outputs=["semantics"])


def test_dynamic_size_runtime_and_bgr_runtime(factory):
    scene = make_scene(40, 64)
    for order in ("rgb", "bgr"):
        rt = PaletteRuntime(input_size=None, channel_order=order)
        res = FramePipeline(rt, PipelineConfig(threshold=0.0), factory).process(image_msg(factory, scene, "rgb8"))
        np.testing.assert_array_equal(res.outputs.semantic, reference_semantic(scene))
        ov, _ = image_view(res.messages["overlay"])
        assert tuple(ov[45 - 10, 5]) != tuple(ov[0, 0])   # road vs sky: overlay is in RGB either way


def test_compressed_input_and_process_image(factory):
    scene = make_scene(48, 96)
    fmt, payload = encode_compressed(scene, "png")
    C = factory.types["sensor_msgs/msg/CompressedImage"]
    msg = cdr(factory, C(header=factory.header(1, 2, "c"), format=fmt, data=payload), C.__msgtype__)
    pipe = FramePipeline(PaletteRuntime(), PipelineConfig(threshold=0.0), factory)
    res = pipe.process(msg)
    np.testing.assert_array_equal(res.outputs.semantic, reference_semantic(scene))
    res2 = pipe.process_image(scene[..., ::-1], order="bgr")
    np.testing.assert_array_equal(res2.outputs.mask, res.outputs.mask)
    assert res2.messages["status"].header.frame_id == ""


def test_end_to_end_latency_includes_waiting(factory):
    pipe = FramePipeline(PaletteRuntime(), PipelineConfig(threshold=0.0), factory)
    msg = image_msg(factory, make_scene(16, 32, blob=None))
    res = pipe.process(msg, outputs=["status"], received_at=time.perf_counter() - 0.5)
    assert res.status.end_to_end_latency_ms >= 500 and res.status.regions == []
    assert res.status.anomaly_fraction == 0.0


def test_bad_frames_raise_specific_errors(factory):
    pipe = FramePipeline(PaletteRuntime(), PipelineConfig(threshold=0.0), factory)
    Img = factory.types["sensor_msgs/msg/Image"]
    h = factory.header()
    with pytest.raises(UnsupportedEncodingError):
        pipe.process(Img(header=h, height=2, width=2, encoding="32FC1", is_bigendian=0, step=8, data=np.zeros(16, np.uint8)))
    with pytest.raises(ImageLayoutError):
        pipe.process(Img(header=h, height=2, width=2, encoding="rgb8", is_bigendian=0, step=6, data=np.zeros(11, np.uint8)))
    C = factory.types["sensor_msgs/msg/CompressedImage"]
    with pytest.raises(CorruptCompressedImageError):
        pipe.process(C(header=h, format="jpeg", data=np.frombuffer(b"\xff\xd8garbage", np.uint8)))
    # and the next good frame still works
    assert pipe.process(image_msg(factory, make_scene(16, 32, blob=(4, 10, 6, 8)))).outputs.mask.any()


def test_incompatible_runtime_outputs(factory):
    class Wrong(PaletteRuntime):
        def infer(self, image, threshold):
            out = super().infer(image, threshold)
            return FrameOutputs(out.semantic[:-1], out.score, out.mask)

    with pytest.raises(RuntimeOutputError, match="returned semantic"):
        FramePipeline(Wrong(), PipelineConfig(threshold=0.0), factory).process(image_msg(factory, make_scene(16, 32)))


def test_config_validation_and_from_inference():
    with pytest.raises(ValueError, match="output_resolution"):
        PipelineConfig(output_resolution="full").validate()
    with pytest.raises(ValueError, match="overlay_alpha"):
        PipelineConfig(overlay_alpha=2).validate()
    with pytest.raises(ValueError, match="min_region_area"):
        PipelineConfig(min_region_area=0).validate()
    cfg = PipelineConfig.from_inference(InferenceConfig(threshold=-3.0, score_at_network_resolution=True, min_region_area=7))
    assert (cfg.threshold, cfg.output_resolution, cfg.min_region_area) == (-3.0, "network", 7)
    pipe = FramePipeline(PaletteRuntime(), InferenceConfig(threshold=-3.0))
    assert pipe.cfg.threshold == -3.0 and pipe.factory.library == "rosbags"


def test_anomaly_colour_far_from_palette():
    d = np.sqrt(((PALETTE[:19].astype(float) - np.array(ANOMALY_RGB)) ** 2).sum(-1))
    assert d.min() > 150


def test_encoding_override(factory):
    scene = make_scene(16, 32, blob=(4, 10, 6, 8))
    Img = factory.types["sensor_msgs/msg/Image"]
    bgr = np.ascontiguousarray(scene[..., ::-1])
    msg = Img(header=factory.header(), height=16, width=32, encoding="8UC3", is_bigendian=0, step=96,
              data=bgr.reshape(-1))
    with pytest.raises(UnsupportedEncodingError, match="8UC3"):
        FramePipeline(PaletteRuntime(), PipelineConfig(threshold=0.0), factory).process(msg)
    pipe = FramePipeline(PaletteRuntime(), PipelineConfig(threshold=0.0, encoding_override="bgr8"), factory)
    np.testing.assert_array_equal(pipe.process(msg).outputs.semantic, reference_semantic(scene))
    with pytest.raises(ValueError, match="encoding_override"):
        PipelineConfig(encoding_override="8UC3").validate()


@pytest.mark.parametrize("camera", [(48, 96), (50, 97), (24, 48)])
def test_semantic_colour_equals_the_palette_of_the_published_ids(factory, camera):
    """Colours are looked up at network resolution and upsampled nearest-neighbour (16x fewer lookups
    at 4x upsampling): this must equal the palette applied to the published semantic ids exactly,
    whatever the scale (also non-integer)."""
    h, w = camera
    rt = PaletteRuntime(input_size=(24, 48))
    pipe = FramePipeline(rt, PipelineConfig(threshold=0.0), factory)
    res = pipe.process(image_msg(factory, make_scene(h, w, blob=(h // 3, w // 3, 8, 12))))
    sem, _ = image_view(res.messages["semantic"])
    colour, _ = image_view(res.messages["semantic_color"])
    np.testing.assert_array_equal(colour, PALETTE[sem])      # independent: numpy gather on the ids
    assert len(np.unique(sem)) > 2


def test_emit_gets_the_status_first_then_each_image(factory):
    """The node publishes from ``emit``: the status must not wait for the images, and every message
    emitted is the one returned."""
    rt = PaletteRuntime(input_size=(24, 48))
    pipe = FramePipeline(rt, PipelineConfig(threshold=0.0, min_region_area=20), factory)
    seen: list[tuple[str, object, float]] = []
    res = pipe.process(image_msg(factory, make_scene(48, 96, blob=(20, 30, 10, 16))),
                       emit=lambda name, m: (seen.append((name, m, time.perf_counter())), time.sleep(0.002)))
    assert [n for n, _, _ in seen][0] == "status"
    assert sorted(n for n, _, _ in seen) == sorted(OUTPUT_NAMES)
    assert all(res.messages[n] is m for n, m, _ in seen)
    # time spent inside emit is reported as publishing, not as encoding
    assert res.timings["publish"] >= 2.0 * len(OUTPUT_NAMES) * 0.9
    assert res.timings["encode"] + res.timings["publish"] <= res.timings["total"]
    # the status' own latency ends before the images were built
    assert res.status.end_to_end_latency_ms < res.timings["end_to_end"]
    only = pipe.process(image_msg(factory, make_scene(48, 96)), outputs=["anomaly_mask"], emit=lambda n, m: None)
    assert set(only.messages) == {"anomaly_mask"} and only.status.end_to_end_latency_ms > 0


def test_fresh_arrays_are_kept_not_copied_where_the_library_allows(factory):
    arr = np.arange(24, dtype=np.uint8).reshape(4, 6)
    kept = factory.image(factory.header(), arr, "mono8", fresh=True)
    assert np.shares_memory(kept.data, arr)                     # rosbags holds numpy arrays: no copy
    assert not np.shares_memory(factory.image(factory.header(), arr, "mono8").data, arr)
    ro = arr.copy()
    ro.flags.writeable = False                                  # e.g. a view of received bytes
    assert not np.shares_memory(factory.image(factory.header(), ro, "mono8", fresh=True).data, ro)
    copies = MessageFactory(factory.types, lambda a: bytes(a), "bytes-only")
    assert copies.image(copies.header(), arr, "mono8", fresh=True).data == arr.tobytes()


class ReusingRuntime(PaletteRuntime):
    """Writes every result into the same three arrays, like ONNX Runtime with reuse_outputs."""

    reuse_outputs = True

    def infer(self, image, threshold):
        out = super().infer(image, threshold)
        if not hasattr(self, "_bufs"):
            self._bufs = FrameOutputs(np.empty_like(out.semantic), np.empty_like(out.score), np.empty_like(out.mask))
        for name in ("semantic", "score", "mask"):
            np.copyto(getattr(self._bufs, name), getattr(out, name))
        return self._bufs


def test_camera_size_maps_are_made_only_when_used_and_survive_the_next_frame(factory):
    rt = ReusingRuntime(input_size=(24, 48))
    pipe = FramePipeline(rt, PipelineConfig(threshold=0.0), factory)
    scenes = [make_scene(48, 96, blob=(20, 30, 10, 16)), make_scene(48, 96, blob=(5, 60, 12, 20))]
    only_status = pipe.process(image_msg(factory, scenes[0]), outputs=["status"])
    lazy = vars(only_status.outputs)
    assert not {"semantic", "score", "mask"} & set(lazy)          # nothing upsampled for the status
    assert only_status.outputs.size == (48, 96)
    pipe.process(image_msg(factory, scenes[1]))                   # the runtime overwrites its arrays
    # upsampled now, from the first frame's own outputs, equal to what an eager pipeline publishes
    eager = FramePipeline(PaletteRuntime(input_size=(24, 48)), PipelineConfig(threshold=0.0), factory)
    ref = eager.process(image_msg(factory, scenes[0]))
    np.testing.assert_array_equal(only_status.outputs.semantic, image_view(ref.messages["semantic"])[0])
    np.testing.assert_array_equal(only_status.outputs.score, float_image_from_msg(ref.messages["anomaly_score"]))
    np.testing.assert_array_equal(only_status.outputs.mask * 255, image_view(ref.messages["anomaly_mask"])[0])


# --- JPEG decoded at reduced scale for the network ---------------------------------------------

class InputSpy(PaletteRuntime):
    """Keeps a copy of every network input it was given."""

    def infer(self, image, threshold):
        self.inputs = getattr(self, "inputs", []) + [np.array(image, copy=True)]
        return super().infer(image, threshold)


def _jpeg_msg(factory, rgb, quality=95):
    fmt, payload = encode_compressed(rgb, "jpeg", quality=quality)
    C = factory.types["sensor_msgs/msg/CompressedImage"]
    return cdr(factory, C(header=factory.header(1, 2, "cam"), format=fmt, data=payload), C.__msgtype__), payload


def test_jpeg_reduction_factor():
    from pebal_ros.pipeline.convert import jpeg_reduction

    assert jpeg_reduction((1024, 2048), (128, 256)) == 8
    assert jpeg_reduction((1000, 2000), (128, 256)) == 4        # 1/8 would give 125 < 128 rows
    assert jpeg_reduction((100, 190), (24, 48)) == 4            # ceil: 25 x 48
    assert jpeg_reduction((512, 1024), (512, 1024)) == 1 and jpeg_reduction((480, 640), (512, 1024)) == 1


def test_a_large_jpeg_feeds_the_network_from_a_reduced_decode(factory):
    """The network input is libjpeg's 1/4-scale decode (not a full decode averaged down): the same
    pixels as OpenCV's IMREAD_REDUCED_COLOR_4, within a grey level or two of the full decode
    area-resized; everything at camera size (outputs, overlay) still uses the whole frame."""
    scene = cv2.GaussianBlur(make_scene(96, 192, blob=(40, 60, 20, 32)), (5, 5), 1.5)
    msg, payload = _jpeg_msg(factory, scene)
    rt = InputSpy(input_size=(24, 48))
    pipe = FramePipeline(rt, PipelineConfig(threshold=1e6, overlay_boxes=False), factory)   # no anomalies
    res = pipe.process(msg)
    reduced = cv2.cvtColor(cv2.imdecode(payload, cv2.IMREAD_REDUCED_COLOR_4), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(rt.inputs[-1], reduced)
    full = cv2.cvtColor(cv2.imdecode(payload, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    area = cv2.resize(full, (48, 24), interpolation=cv2.INTER_AREA)
    assert np.abs(reduced.astype(int) - area).mean() < 2.0
    assert res.camera_size == (96, 192) and res.status.image_width == 192
    sem, _ = image_view(res.messages["semantic"])
    ov, _ = image_view(res.messages["overlay"])
    assert sem.shape == (96, 192) and ov.shape == (96, 192, 3)
    # the overlay blends the whole decoded frame, not an upsampled network input
    np.testing.assert_array_equal(ov, cv2.addWeighted(full, 0.5, PALETTE[sem], 0.5, 0.0))
    # PNG, and a JPEG no larger than the network: decoded whole, then resized (as before)
    fmt, png = encode_compressed(scene, "png")
    C = factory.types["sensor_msgs/msg/CompressedImage"]
    pipe.process(cdr(factory, C(header=factory.header(), format=fmt, data=png), C.__msgtype__))
    np.testing.assert_array_equal(rt.inputs[-1], cv2.resize(scene, (48, 24), interpolation=cv2.INTER_AREA))


def test_reduced_jpeg_decoding_is_the_same_alone_and_in_a_batch(factory):
    scenes = [cv2.GaussianBlur(make_scene(h, w), (5, 5), 1.5) for h, w in ((96, 192), (100, 190), (24, 48))]
    msgs = [_jpeg_msg(factory, s)[0] for s in scenes]
    alone = InputSpy(input_size=(24, 48))
    pipe = FramePipeline(alone, PipelineConfig(threshold=0.0), factory)
    singles = [pipe.process(m) for m in msgs]
    together = InputSpy(input_size=(24, 48))
    batch = FramePipeline(together, PipelineConfig(threshold=0.0), factory).process_batch(msgs)
    for a, b, x, y in zip(singles, batch, alone.inputs, together.inputs):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(a.outputs.mask, b.outputs.mask)
        assert a.camera_size == b.camera_size
        np.testing.assert_array_equal(image_view(a.messages["overlay"])[0], image_view(b.messages["overlay"])[0])
    assert [r.camera_size for r in singles] == [(96, 192), (100, 190), (24, 48)]


def test_reduced_decoding_keeps_every_bad_frame_check(factory):
    from pebal_ros.pipeline.convert import compressed_to_array, jpeg_size

    scene = make_scene(96, 192)
    msg, payload = _jpeg_msg(factory, scene)
    assert jpeg_size(msg) == (96, 192)
    pipe = FramePipeline(PaletteRuntime(input_size=(24, 48)), PipelineConfig(threshold=0.0), factory)
    C = factory.types["sensor_msgs/msg/CompressedImage"]
    truncated = C(header=factory.header(), format="jpeg", data=payload[: payload.size // 2].copy())
    with pytest.raises(CorruptCompressedImageError, match="end-of-image"):
        pipe.process(truncated)                               # header fine, data cut: still refused
    fmt, png = encode_compressed(scene, "png")
    png_msg = C(header=factory.header(), format=fmt, data=png)
    assert jpeg_size(png_msg) is None
    with pytest.raises(ValueError, match="needs a JPEG"):
        compressed_to_array(png_msg, "rgb", reduce=2)
    with pytest.raises(ValueError, match="reduce must be one of"):
        compressed_to_array(msg, "rgb", reduce=3)
    assert compressed_to_array(msg, "rgb", reduce=8).shape == (12, 24, 3)


class _MaskRuntime:
    """A runtime whose anomaly mask is given (the pipeline's region rule is what is under test)."""
    name = "fixed-mask"
    channel_order = "rgb"

    def __init__(self, mask: np.ndarray):
        self.mask = mask.astype(np.uint8)
        self.input_size = mask.shape

    def infer(self, image: np.ndarray, threshold: float) -> FrameOutputs:
        return FrameOutputs(semantic=np.zeros(self.mask.shape, np.uint8),
                            score=np.where(self.mask > 0, 1.0, -1.0).astype(np.float32), mask=self.mask.copy())


@pytest.mark.parametrize("camera_scale", [(2, 2), (3, 3), (3, 2), (1, 1)])
def test_min_region_area_is_in_camera_pixels(factory, camera_scale):
    """No reported region is smaller than min_region_area camera pixels, and every network region
    whose camera-pixel area reaches it is reported (e.g. 12 network pixels = 48 camera pixels at 2x
    were reported for min_region_area 50)."""
    sy, sx = camera_scale
    mask = np.zeros((30, 96), np.uint8)
    sizes = list(range(3, 31))   # one horizontal bar of each size, 2 rows apart
    for i, n in enumerate(sizes):
        mask[(i % 10) * 3, (i // 10) * 32:(i // 10) * 32 + n] = 1
    cam = np.zeros((30 * sy, 96 * sx, 3), np.uint8)
    for m in (7, 20, 36, 40, 50, 61):
        pipe = FramePipeline(_MaskRuntime(mask), PipelineConfig(threshold=0.0, min_region_area=m, max_regions=100),
                             factory)
        st = pipe.process_image(cam, outputs=["status"]).status
        got = sorted(r.area for r in st.regions)
        # independent: each bar of n network pixels covers n * sx * sy camera pixels
        want = sorted(n * sx * sy for n in sizes if n * sx * sy >= m)
        assert got == want, (m, camera_scale)
