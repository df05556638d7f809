"""Modular ensembles of compact spiking networks for place recognition.

The pure core: ``encoding`` (images to input rates and spike trains), ``dynamics`` (one presentation of an
image to many modules at once: LIF excitatory and inhibitory populations from norse, lateral inhibition,
STDP traces), ``learning`` (the weight update), ``readout`` (query-time spike counts in closed form, neuronal
assignment, hyperactive neurons, place scores) and ``training`` (epochs over each module's region).
``model`` holds a trained network and its artefact format.
"""
