"""社区 (the community): one-click repair (一键报修) of shared spaces with an SLA, the resident's confirmation and
rating; community notices targeted by building, with read receipts, and by SMS when urgent."""
