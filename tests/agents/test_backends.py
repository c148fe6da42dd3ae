import numpy as np
import pytest

from agents.backends import BACKENDS, BackendError, create_backend
from agents.backends.openvino_backend import check_device
from shared.bundle import load_public_key, verify_bundle
from shared.preprocessing import crop_and_resize
from tests.agents.helpers import BLUE, RED, SIZE, image, make_bundle, make_keys, reference_probabilities


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    keys = make_keys(folder)
    bundle, _ = make_bundle(folder, keys)
    manifest = verify_bundle(bundle, load_public_key(keys.public), folder / "m")
    return folder / "m", manifest


def test_unknown_backend_lists_known_names():
    with pytest.raises(ValueError, match="known backends: fake, openvino"):
        create_backend("tensorrt")
    assert set(BACKENDS) == {"openvino", "fake"}


def test_unknown_device_lists_available_devices():
    with pytest.raises(BackendError) as err:
        create_backend("openvino", device="NOPE")
    msg = str(err.value)
    assert "'NOPE'" in msg and "CPU" in msg and "AUTO" in msg


def test_device_names_are_checked_inside_virtual_devices():
    check_device("AUTO", ["CPU"])
    check_device("AUTO:CPU", ["CPU"])
    check_device("GPU.1", ["CPU", "GPU.0", "GPU.1"])
    with pytest.raises(BackendError, match="unknown: MYRIAD"):
        check_device("MULTI:CPU,MYRIAD", ["CPU"])


def test_fake_backend_is_deterministic_and_follows_colour(tiny_model):
    model_dir, manifest = tiny_model
    fake = create_backend("fake")
    fake.load(model_dir, manifest)
    batch = np.stack([crop_and_resize(image(BLUE), SIZE), crop_and_resize(image(RED), SIZE)])
    probs = fake.infer(batch)
    assert probs.shape == (2, 2) and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert probs[0, 0] > 0.5 > probs[1, 0]
    assert np.array_equal(probs, fake.infer(batch))
    assert fake.device == "fake"


@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_openvino_runs_the_ir_sync_and_async(tiny_model, precision):
    model_dir, manifest = tiny_model
    backend = create_backend("openvino", device="CPU", precision=precision, performance_hint="THROUGHPUT")
    backend.load(model_dir, manifest)
    images = [image(BLUE if i % 2 == 0 else RED, seed=i) for i in range(5)]
    batch = np.stack([crop_and_resize(im, SIZE) for im in images])
    batched = backend.infer(batch)  # AsyncInferQueue path
    single = np.concatenate([backend.infer(batch[i : i + 1]) for i in range(len(batch))])  # sync path
    expected = np.array([reference_probabilities(im, flip=False) for im in images])
    assert batched.shape == (5, 2)
    np.testing.assert_allclose(batched, single, atol=1e-6)
    np.testing.assert_allclose(batched, expected, atol=1e-3 if precision == "FP16" else 1e-5)
    backend.close()
    with pytest.raises(BackendError, match="before load"):
        backend.infer(batch)


def test_openvino_rejects_a_batch_of_the_wrong_shape(tiny_model):
    model_dir, manifest = tiny_model
    backend = create_backend("openvino", device="CPU")
    backend.load(model_dir, manifest)
    with pytest.raises(BackendError, match=r"uint8 \[N, 32, 32, 3\]"):
        backend.infer(np.zeros((1, 16, 16, 3), dtype=np.uint8))
    with pytest.raises(BackendError, match="uint8"):
        backend.infer(np.zeros((1, SIZE, SIZE, 3), dtype=np.float32))


def test_a_backend_is_freed_when_its_last_reference_goes(tiny_model):
    """No cycle through OpenVINO's infer queue: a backend referenced from its own queue's callback is
    freed only by a GC pass, and one running on OpenVINO's callback thread aborted the process
    (std::terminate, "Resource deadlock avoided")."""
    import gc
    import weakref

    model_dir, manifest = tiny_model
    backend = create_backend("openvino", device="CPU")
    backend.load(model_dir, manifest)
    backend.infer(np.zeros((3, SIZE, SIZE, 3), dtype=np.uint8))
    ref = weakref.ref(backend)
    gc.disable()
    try:
        del backend
        assert ref() is None, "the backend is kept alive by a reference cycle"
    finally:
        gc.enable()
