"""Everything that imports qgis: provider, algorithms, actions, panels, styling, dependency check.

Imports point one way: ``plugin`` -> ``cropmodels``, never back.
"""
