"""The fourth real-document pack: held-out only, written after the sixth tuning round, so
that round's fixed choice meets questions that no round has looked at."""
