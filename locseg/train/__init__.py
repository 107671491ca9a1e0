"""locseg.train"""
