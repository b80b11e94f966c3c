"""MuseNet (OpenAI 2019) on your machine: MIDI as a token language, composer-conditioned training, primed generation.

encoding.py (the token language), corpus.py (music21 corpus and your MIDI), train.py, generate.py, render.py,
evaluate.py, cli.py (`nexttoken muse ...`).
"""
