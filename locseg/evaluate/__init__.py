"""locseg.evaluate"""
