"""locseg.geometry"""
