"""MuseNet (OpenAI 2019, https://openai.com/index/musenet/) on your machine: MIDI as a token language,
composer-conditioned training with MuseNet's timing and structural embeddings, primed generation ranked by an inner
critic, and the measurements MuseNet's demos invite (bits per note, composer fidelity, distances to real music).

encoding.py (the token language; miditok_encoding.py, MidiTok's for comparison), token_files.py (a MIDI file as
tokens and back), data.py (training rows from the corpus of ``nexttoken.midi``), model.py (the GPT plus MuseNet's
embeddings), train.py, generate.py, critic.py, evaluate.py, embeddings.py (the composer map), demo.py (the demo
section and `muse report`), cli.py (`nexttoken muse ...`).
"""

HELP = "MuseNet: MIDI as a language, composer-conditioned training, primed generation"
