"""Cell-level analysis shared by the trainer and the agent: the manifest contract (:mod:`.spec`),
the per-field decision (:mod:`.decision`) and the white-cell finder (:mod:`.finder`)."""
