"""airbench94's techniques (K. Jordan, arXiv 2404.00498) wired into a run: the model options
that are not the architecture (BatchNorm without a scale, dirac and whitening initialisation)
and the callbacks (Lookahead, the whitened stem's freezing). Each technique's own code lives in
training/models/init_schemes.py, training/lookahead.py, training/callbacks.py (StemFreeze).
"""

from __future__ import annotations

import logging

from training.callbacks import RunClock, StemFreeze
from training.config import Recipe
from training.data.cache import PresizedImages
from training.errors import ConfigError
from training.learner import Callback
from training.lookahead import Lookahead
from training.models import Classifier
from training.models.init_schemes import dirac_init, fix_bn_weights, stem_conv, whiten_stem

log = logging.getLogger(__name__)


def shape_model(model: Classifier, recipe: Recipe, *, initialise: bool = True) -> Classifier:
    """The recipe's model options that are not the architecture: BatchNorm without a trainable
    scale, identity (dirac) initialisation (training/models/init_schemes.py). Whitening needs
    the data: prepare_run does it."""
    if not recipe.model.bn_weight:
        fix_bn_weights(model)
    if recipe.model.dirac and initialise:
        log.info("dirac init: %d convolutions start as the identity", dirac_init(model))
    return model


def whiten_from_data(model: Classifier, recipe: Recipe, presized: PresizedImages | None) -> None:
    """model.whiten: the stem becomes the training images' patch-whitening transform."""
    if not recipe.model.whiten or recipe.model.init_from:
        return
    if presized is None:
        raise ConfigError("model.whiten computes the stem from the presized training images; "
                          "set data.cache to \"auto\", \"memory\" or \"disk\"")
    whiten_stem(model, presized.images)
    log.info("whitened stem: %s from %d training images", tuple(stem_conv(model).weight.shape),
             min(len(presized), 5000))


def technique_callbacks(recipe: Recipe, model: Classifier, clock: RunClock) -> list[Callback]:
    """Lookahead and the whitened stem's freezing, when the recipe asks for them."""
    t, out = recipe.train, []
    if t.lookahead_every > 0:
        out.append(Lookahead(clock, every=t.lookahead_every, decay=t.lookahead_decay))
    if recipe.model.whiten:
        out.append(StemFreeze(stem_conv(model), clock, t.whiten_weight_epochs,
                              t.whiten_bias_epochs))
    return out
