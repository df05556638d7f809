import numpy as np

from vpr.synthetic import CONDITIONS, RouteConfig, render_traverse, synthetic_traverses


def test_route_is_deterministic_and_seeded():
    config = RouteConfig(n_places=30)
    np.testing.assert_array_equal(render_traverse(config, "night"), render_traverse(config, "night"))
    other = render_traverse(RouteConfig(n_places=30, seed=1), "night")
    assert not np.array_equal(render_traverse(config, "night"), other)


def test_traverses_share_places_but_differ_in_appearance():
    config = RouteConfig(n_places=30)
    day, night = render_traverse(config, "day"), render_traverse(config, "night")
    assert day.shape == night.shape == (30, 48, 64, 3) and day.dtype == np.uint8
    assert night.mean() < 0.5 * day.mean()
    # Neighbouring places overlap, far places do not: the same place correlates best across conditions.
    def gray(images):
        g = images.astype(float).mean(axis=-1).reshape(len(images), -1)
        return (g - g.mean(1, keepdims=True)) / g.std(1, keepdims=True)

    correlation = gray(day) @ gray(render_traverse(config, "overcast")).T / day[0, ..., 0].size
    assert np.mean(np.argmax(correlation, axis=0) == np.arange(30)) > 0.5


def test_synthetic_traverses_cover_every_condition():
    traverses = synthetic_traverses()
    assert set(traverses) == set(CONDITIONS)
    assert len(traverses["day"]) == RouteConfig().n_places
    assert traverses["day"][3].shape == (48, 64, 3)
