"""Where a phase can train on cached features (transferkit._cache_plan)."""

from __future__ import annotations

import transferkit as tk
from transferkit._cache_plan import plan_cache
from transferkit._model import model_parts


def _model():
    return tk.build_model("tiny_cnn", num_outputs=3, weights="imagenet", image_size=32)


def test_a_frozen_backbone_is_cached_at_its_output_and_a_partly_open_one_at_the_freeze_boundary(image_folder):
    data = tk.load_folder(image_folder, image_size=32, batch_size=8)
    cache = tk.FeatureCache()
    model = _model()
    tk.FreezeAll().apply(model, tk.get_backbone("tiny_cnn"))
    plan = plan_cache(model, data, cache, augment_views=0, callbacks=())
    assert plan is not None and plan.where == "backbone output"
    assert plan.trainable is model_parts(model).head  # only the head trains, on the backbone's features
    tk.UnfreezeTop(1).apply(model, tk.get_backbone("tiny_cnn"))
    plan = plan_cache(model, data, cache, augment_views=0, callbacks=())
    assert plan is not None and plan.where.startswith("activations at the freeze boundary")
    assert any(layer.trainable_weights for layer in plan.trainable.layers)  # the open block trains above the cut


def test_no_plan_where_caching_would_change_the_result(image_folder):
    model = _model()
    tk.FreezeAll().apply(model, tk.get_backbone("tiny_cnn"))
    plain = tk.load_folder(image_folder, image_size=32, batch_size=8)
    augmented = tk.load_folder(image_folder, image_size=32, batch_size=8, augment=tk.Augment())
    assert plan_cache(model, plain, None, augment_views=0, callbacks=()) is None  # no cache
    assert plan_cache(model, None, tk.FeatureCache(), augment_views=0, callbacks=()) is None  # a tf.data input
    # augmented images differ every epoch; views stand in for them only where asked for
    assert plan_cache(model, augmented, tk.FeatureCache(), augment_views=0, callbacks=()) is None
    views = plan_cache(model, augmented, tk.FeatureCache(), augment_views=2, callbacks=())
    assert views is not None and views.views == 2
    tk.UnfreezeTop(1).apply(model, tk.get_backbone("tiny_cnn"))
    assert plan_cache(model, augmented, tk.FeatureCache(), augment_views=2, callbacks=()) is None  # head phase only
