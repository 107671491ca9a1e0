"""locseg.evaluate: how well locseg did.

- ``pose``: localization recall at (metres, degrees) thresholds per condition.
"""
