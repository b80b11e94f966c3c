"""Note data shared by the music domains: the built-in synthesizer (synth.py) that turns notes into audio."""
