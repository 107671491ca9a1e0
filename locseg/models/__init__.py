"""locseg.models"""
