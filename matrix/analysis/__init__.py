"""Analysis: compare tensors and cells, classify drift, attribute it to one axis, localise it
to one layer; the findings and the exit gate.
"""
