"""Attribution service: which outreach produced which orders, measured against the control group.

`model` holds the definitions (pure), `readout` a campaign's figures, `engine` the worker on the
shared stream loop."""
