"""The third real-document pack: tuning only (more questions to choose fusion and abstention
rules on; packs 1's held-out split and 2 stay the judges)."""
