"""Music as notes, shared by the music domains (MuseNet's ``muse`` and Jukebox's ``jukebox``; a domain never imports
another, so what both read lives here):

- ``notes``: ``Notes`` (a piece as note arrays, times in seconds, instruments as 11 GM families), MIDI files read into
  them (``read_midi``; ``read_user_midi`` and ``read_midi_files`` parse untrusted files in worker processes) and
  written from them (``write_midi``);
- ``smf``: the Standard MIDI File structure checked byte by byte, so a damaged file is refused before it is parsed;
- ``corpus``: ``load_corpus("music21-small")`` -> a ``Corpus`` of labelled pieces (the music21 corpus, a folder or
  CSV of the user's MIDI, or a cached note table), split into train and validation pieces;
- ``music21_corpus``: the conversion of the corpus the music21 wheel ships to MIDI, once, resumably;
- ``render``: notes to audio (``render``, ``render_wav``) through a General MIDI soundfont, or without one through
- ``synth``: a built-in General MIDI synthesizer.
"""
