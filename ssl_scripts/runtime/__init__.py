"""The processes of a run: their launcher, what they agree on, their signals and progress on a terminal."""
