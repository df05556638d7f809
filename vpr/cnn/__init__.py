"""Conventional CNN place descriptors (NetVLAD, GeM) on an ImageNet MobileNetV2 trunk: the baselines the spiking
methods are compared with. ``weights`` gets the trunk's weights offline, ``trunk``/``netvlad``/``gem``/``model``
build the network and its artefact, ``finetune`` trains it; ``vpr.methods.cnn`` exposes it as place methods."""
