"""locseg.store"""
