"""Visual place recognition: datasets, preprocessing, methods, sequence matching and metrics.

Data flows one way: dataset -> preprocess -> method (distance matrix) -> sequence matching -> metrics/report.
"""
