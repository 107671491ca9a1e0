"""locseg.localize"""
