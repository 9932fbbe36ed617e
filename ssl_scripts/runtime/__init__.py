"""The processes of a run: their launcher, what they agree on, their signals, how every command ends (cli),
files written whole or not at all, file locks, and progress on a terminal."""
