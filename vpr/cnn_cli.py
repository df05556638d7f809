"""``spikebot vpr train-netvlad`` and ``train-gem``: build a CNN place model on an aligned training split.

A thin shell: options become a :class:`TrainingConfig`; :func:`train_place_net` does the work and the model is
saved as one artefact folder that ``--method netvlad`` / ``gem`` read through their ``model_dir``.
"""

from __future__ import annotations

import dataclasses

import click

from vpr.cnn.finetune import TrainingConfig, train_place_net
from vpr.cnn.model import PlaceNetConfig, save_model
from vpr.cnn.netvlad import NetVLADConfig
from vpr.datasets import load_registered
from vpr.errors import SpikebotError
from vpr.methods.cnn import default_device


def _image_size(_context, _parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        width, height = (int(part) for part in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected WIDTHxHEIGHT such as 160x80, got {value!r}") from None
    return width, height


def _options(command):
    options = [
        click.option("--dataset", default="nordland_trimmed", show_default=True, help="Registered, frame-aligned dataset."),
        click.option("--reference", default="summer", show_default=True, help="Traverse whose frame i is the positive of the query's frame i."),
        click.option("--query", default="winter", show_default=True),
        click.option("--split", type=click.Choice(["calibration", "test", "all"]), default="calibration", show_default=True,
                     help="Train on places the evaluation will not see: calibration for a test-split evaluation."),
        click.option("--data-root", type=click.Path(file_okay=False), help="Where datasets live (default: $SPIKEBOT_DATA, else datasets/)."),
        click.option("--epochs", type=click.IntRange(min=0), default=TrainingConfig.epochs, show_default=True,
                     help="Triplet fine-tuning epochs; 0 = off-the-shelf (k-means and PCA only)."),
        click.option("--image-size", callback=_image_size, help="Network input WIDTHxHEIGHT [default: 160x80]."),
        click.option("--cut", type=click.IntRange(1, 19), help="Trunk = MobileNetV2 features[:CUT] [default: 14 NetVLAD, 19 GeM]."),
        click.option("--whitening-dim", type=click.IntRange(min=1), help="PCA-whiten descriptors to this many dimensions."),
        click.option("--trainable-blocks", type=click.IntRange(min=1), default=TrainingConfig.trainable_blocks, show_default=True,
                     help="Last trunk layers fine-tuned (with the head); the rest stay frozen."),
        click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=TrainingConfig.learning_rate, show_default=True),
        click.option("--negative-gap", type=click.IntRange(min=0), default=TrainingConfig.negative_gap, show_default=True,
                     help="Negatives lie more than this many frames from the anchor's place."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder for the model artefact."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _train(model: PlaceNetConfig, *, dataset, reference, query, split, data_root, epochs, image_size, cut,
           whitening_dim, trainable_blocks, learning_rate, negative_gap, seed, out) -> None:
    trunk_changes = {"cut": cut} if cut else {}
    if image_size:
        trunk_changes.update(width=image_size[0], height=image_size[1])
    try:
        config = TrainingConfig(
            model=dataclasses.replace(model, trunk=dataclasses.replace(model.trunk, **trunk_changes), whitening_dim=whitening_dim),
            epochs=epochs, trainable_blocks=trainable_blocks, learning_rate=learning_rate, negative_gap=negative_gap, seed=seed)
        data = load_registered(dataset, reference, query, data_root=data_root, split=split)
        if data.info.get("ground_truth") != "frame_aligned":
            raise click.UsageError(f"training needs a frame-aligned dataset; {dataset} has a ground-truth file")
        device = default_device()
        network, record = train_place_net(data.reference, data.query, config, device=device,
                                          split={"dataset": dataset, **data.info})
        save_model(out, network, config.variant, record)
    except (SpikebotError, ValueError, OSError) as error:
        raise click.ClickException(str(error)) from error
    losses = ", ".join(f"{loss:.4f}" for loss in record["losses"])
    click.echo(f"{config.variant} {model.head} ({len(data.reference)} places, {device}, {record['seconds']['total']:.0f} s"
               f"{f', losses per epoch: {losses}' if losses else ''}) -> {out}")


@click.command("train-netvlad")
@_options
@click.option("--clusters", type=click.IntRange(min=2), default=NetVLADConfig.clusters, show_default=True)
def train_netvlad(clusters: int, **options) -> None:
    """NetVLAD on MobileNetV2: k-means centres on the split, triplet fine-tuning (--epochs 0: none), PCA if asked."""
    model = PlaceNetConfig.default("netvlad")
    _train(dataclasses.replace(model, netvlad=dataclasses.replace(model.netvlad, clusters=clusters)), **options)


@click.command("train-gem")
@_options
def train_gem(**options) -> None:
    """GeM on MobileNetV2: triplet fine-tuned like NetVLAD, or ImageNet weights as they are (--epochs 0); PCA if asked."""
    _train(PlaceNetConfig.default("gem"), **options)
