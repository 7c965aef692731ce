"""市民议事厅 (the citizens' council): proposals by verified residents of a community, comments, one vote per
resident per proposal (changeable until the close), results published at the close, moderation with a reason."""
