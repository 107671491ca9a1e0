"""locseg.io"""
