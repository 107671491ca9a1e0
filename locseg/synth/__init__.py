"""locseg.synth"""
